"""Service configuration from the environment (pydantic-settings), one place for every default.

The embedded default keeps everything under `./automl-data/`: the SQLite database that holds the
jobs and the Optuna studies, the Optuna artifact store, and Ray Tune's run directories.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.artifacts import check_location

DATABASES = "sqlite:///path/to/automl.db or postgresql+psycopg2://user@host:5432/dbname"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOML_", extra="ignore")

    home: Path = Field(default=Path("automl-data"), description="root of the embedded default")
    database_url: str | None = Field(default=None, description="jobs + Optuna studies")
    artifacts: str | None = Field(default=None, description="Optuna artifact store path")
    runs: Path | None = Field(default=None, description="Ray Tune storage path (checkpoints)")
    ray_address: str | None = Field(default=None, description="Ray cluster; None = local Ray")
    api_token: str | None = Field(default=None, description="bearer token the API requires")
    api_url: str | None = Field(default=None, description="where the CLI finds the API")
    dashboard_url: str = Field(
        default="http://127.0.0.1:8080", description="where users reach optuna-dashboard"
    )
    dataset_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(), description="the only folders jobs submitted over HTTP may read (':'-separated)"
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="largest request body the API reads (a spec is a few KB)"
    )
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking URI for jobs whose spec names none"
    )
    stale_after: float = Field(
        default=60.0, ge=5, le=86400,  # storage.jobs.STALE_AFTER, not imported: it loads SQLAlchemy
        description="seconds without a heartbeat after which a running job's driver counts as "
        "gone and another runner takes the job over (its driver gives up at half of it)",
    )
    job_restarts: int = Field(
        default=3, ge=0, le=100, description="times a runner restarts a job whose driver died"
    )

    @field_validator("dataset_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        """`/datasets:/mnt/shared` from the environment, as PATH is written."""
        if isinstance(value, str):
            return tuple(Path(part) for part in value.split(":") if part.strip())
        return value

    @field_validator("dataset_roots")
    @classmethod
    def _absolute_roots(cls, roots: tuple[Path, ...]) -> tuple[Path, ...]:
        relative = [str(r) for r in roots if not r.is_absolute()]
        if relative:
            raise ValueError(f"dataset roots must be absolute paths, got {', '.join(relative)}")
        return tuple(r.resolve() for r in roots)

    @field_validator("artifacts")
    @classmethod
    def _artifact_location(cls, location: str | None) -> str | None:
        """Storage's refusal, as this setting's error: a job learns of it before it runs, not
        when it publishes its best trial."""
        return location if location is None else check_location(location)

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, url: str | None) -> str | None:
        """Jobs and studies live in SQLite or PostgreSQL: say so before any engine is built."""
        if url is None:
            return url
        try:
            driver = make_url(url).drivername
        except ArgumentError:
            raise ValueError(f"not a database URL; use {DATABASES}") from None
        if driver.split("+")[0] not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {driver!r}; use {DATABASES}")
        return url

    def accepts(self, given: bytes | str) -> bool:
        """Whether `given` is the API token: compared as bytes in constant time, so a header
        of any characters is an answer (a non-ASCII one too), never an exception."""
        if self.api_token is None:
            return True
        if isinstance(given, str):
            given = given.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self.api_token.encode("utf-8"))

    @property
    def storage_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'automl.db').resolve()}"

    @property
    def artifacts_path(self) -> str:
        return self.artifacts or str((self.home / "artifacts").resolve())

    @property
    def runs_path(self) -> Path:
        return (self.runs or self.home / "runs").resolve()


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines and experimental-feature notes would drown a job's live
    view and its log: every process that drives a job starts with this."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
