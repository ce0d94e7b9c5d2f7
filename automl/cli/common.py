"""What every command shares: the consoles, the one place user errors become one line, the
storage options, and the settings they make."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

err = Console(stderr=True)
out = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class Commands(TyperGroup):
    """The `automl` group: a user error raised anywhere below a command (a `UserError`, or the
    database not answering) is one line and its exit code; anything else is a bug and keeps its
    traceback."""

    def invoke(self, ctx: Any) -> Any:
        from storage.optuna_storage import DatabaseUnavailable
        from workers.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as error:
            fail(str(error), error.exit_code)
        except DatabaseUnavailable as error:
            fail(str(error))


StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="database URL (default: SQLite under ./automl-data)"),
]
ArtifactsOpt = Annotated[
    str | None, typer.Option("--artifacts", help="artifact store path (default: automl-data/artifacts)")
]
RayOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Ray cluster address (default: local Ray)")
]
ApiOpt = Annotated[
    str | None,
    typer.Option("--api", help="automl API URL (default: $AUTOML_API_URL; none = local storage)"),
]


def settings_from(
    storage: str | None = None, artifacts: str | None = None, ray_address: str | None = None,
    api: str | None = None,
) -> Any:
    """The environment's settings with the command's options over them; a bad value is named
    by the option or variable it came from."""
    from pydantic import ValidationError

    from automl.settings import Settings

    overrides = {"database_url": storage, "artifacts": artifacts, "ray_address": ray_address,
                 "api_url": api}
    try:
        return Settings.model_validate({k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        fail("; ".join(_setting_error(e) for e in error.errors()))


def _setting_error(error: Any) -> str:
    field = str(error["loc"][0]) if error["loc"] else ""
    message = error["msg"].removeprefix("Value error, ")
    if field == "database_url":
        return f"--storage / AUTOML_DATABASE_URL: {message}"
    if field == "artifacts":
        return f"--artifacts / AUTOML_ARTIFACTS: {message}"
    return f"AUTOML_{field.upper()}: {message}"


def backend(api: str | None, storage: str | None = None, artifacts: str | None = None) -> Any:
    """The API client when an API is configured, else the job service on the local storage."""
    from automl.service.backend import backend_for

    return backend_for(settings_from(storage, artifacts, api=api))


def storage_flags(settings: Any) -> str:
    """The options a printed follow-up command needs to reach the same storage."""
    from automl.settings import Settings

    default = Settings()
    flags = ""
    if settings.storage_url != default.storage_url:
        flags += f" --storage {settings.storage_url}"
    if settings.artifacts_path != default.artifacts_path:
        flags += f" --artifacts {settings.artifacts_path}"
    return flags


def require_free_port(host: str, port: int, option: str) -> None:
    """Say which port is taken before anything starts, rather than a bind error halfway."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        fail(f"cannot listen on {host}:{port} ({error.strerror}); choose another with {option}")
