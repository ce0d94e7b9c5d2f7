"""The job spec: a YAML file validated by pydantic before anything is stored or started.

Errors name the field (`budget.n_trials`, `space.lr`) and what is allowed; nothing half-valid
gets through, so a job either starts with a spec the engine can run or is refused whole.
"""

from __future__ import annotations

import re
import secrets
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from automl.space import SearchSpace, SpaceError
from automl.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER, Strategy
from workers.config import OBJECTIVES

Duration = float | str
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SpecError(ValueError):
    """An invalid job spec; the message lists every problem, each with its field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    source: str = Field(description="ImageFolder directory, CSV manifest, or builtin:digits")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_data(self) -> DatasetSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave training images (sum < 1)")
        return self


class ObjectiveSpec(_Strict):
    metric: Literal[OBJECTIVES] = "val_accuracy"  # type: ignore[valid-type]
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _direction_matches(self) -> ObjectiveSpec:
        natural = "minimize" if self.metric == "val_loss" else "maximize"
        if self.direction is not None and self.direction != natural:
            raise ValueError(f"{self.metric} can only be {natural}d; drop `direction` or fix it")
        return self

    @property
    def maximize(self) -> bool:
        return self.metric != "val_loss"

    @property
    def mode(self) -> Literal["max", "min"]:
        return "max" if self.maximize else "min"


class BudgetSpec(_Strict):
    n_trials: int = Field(20, ge=1, le=100_000)
    max_epochs: int = Field(10, ge=1, le=1000)
    time_limit: float | None = Field(None, description="seconds, or '30m', '2h'")
    target: float | None = Field(None, description="stop the job once a trial reaches this value")

    @field_validator("time_limit", mode="before")
    @classmethod
    def _seconds(cls, value: Duration | None) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("time_limit")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("time_limit must be positive (seconds, or like '30m', '2h')")
        return value


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; fractions share a GPU")


class StrategySpec(_Strict):
    sampler: Literal["tpe", "random", "gp", "cmaes"] = DEFAULT_SAMPLER  # type: ignore[assignment]
    pruner: Literal["hyperband", "sha", "median", "none"] = DEFAULT_PRUNER  # type: ignore[assignment]
    seed: int | None = None
    warm_start: bool = Field(True, description="try the strategy's portfolio of strong configs first")
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    pruner_options: dict[str, Any] = Field(default_factory=dict)


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="lowercase, digits, dashes")
    dataset: DatasetSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    budget: BudgetSpec = BudgetSpec()
    max_concurrent_trials: int = Field(1, ge=1, le=1024)
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(2, ge=0, description="retries of a failed trial (a dead worker, an error)")
    strategy: StrategySpec = StrategySpec()
    space: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _space_is_runnable(self) -> JobSpec:
        try:
            self.search_space()
        except SpaceError as error:
            raise ValueError(str(error)) from error
        target = self.budget.target
        if target is not None and self.objective.maximize and not 0 < target <= 1:
            raise ValueError(f"budget.target={target}: {self.objective.metric} lies in (0, 1]")
        return self

    @model_validator(mode="after")
    def _strategy_is_buildable(self) -> JobSpec:
        """Options go to Optuna's sampler and pruner as keywords: build them now, not on Ray."""
        s = self.strategy
        strategy = Strategy(self.search_space(), sampler=s.sampler, pruner=s.pruner,
                            sampler_options=dict(s.sampler_options),
                            pruner_options=dict(s.pruner_options))
        for field, build in (("sampler", strategy.make_sampler), ("pruner", strategy.make_pruner)):
            try:
                with warnings.catch_warnings():  # Optuna's experimental-feature notices
                    warnings.simplefilter("ignore")
                    build()
            except (TypeError, ValueError) as error:
                raise ValueError(f"strategy.{field}_options: {error}") from None
        first_rung = s.pruner_options.get("min_resource")
        if isinstance(first_rung, int) and first_rung >= self.budget.max_epochs:
            raise ValueError(
                f"strategy.pruner_options.min_resource={first_rung} is not below "
                f"budget.max_epochs={self.budget.max_epochs}: the pruner could never stop a "
                "trial; lower it or raise max_epochs"
            )
        return self

    def search_space(self) -> SearchSpace:
        return SearchSpace.from_spec(self.space, self.budget.max_epochs)

    def trial_settings(self) -> dict[str, Any]:
        """What every trial of this job shares, beside what the space samples."""
        return {
            "source": self.dataset.source,
            "val_fraction": self.dataset.val_fraction,
            "test_fraction": self.dataset.test_fraction,
            "split_seed": self.dataset.split_seed,
            "objective": self.objective.metric,
            "epochs": self.budget.max_epochs,
        }


def new_job_id(name: str) -> str:
    """`name-xxxxxx`: readable in the dashboard, unique enough to never collide in practice."""
    return f"{name}-{secrets.token_hex(3)}"


def parse_duration(value: Duration) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration: use seconds or '90s', '30m', '2h', '1d'")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_spec(payload: Any, source: str = "job spec") -> JobSpec:
    if not isinstance(payload, dict):
        raise SpecError(f"{source}: expected a mapping of fields (name, dataset, budget, ...)")
    try:
        return JobSpec.model_validate(payload)
    except ValidationError as error:
        raise SpecError(f"{source} is invalid:\n" + format_errors(error)) from None


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` as a string (it wants `1.0e-4`); users mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def load_spec(path: Path) -> JobSpec:
    if path.is_dir():
        raise SpecError(f"{path} is a directory; pass the job file (YAML) itself")
    if not path.is_file():
        raise SpecError(f"job file {path} does not exist")
    try:
        payload = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (job files are YAML in UTF-8)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    return with_dataset_from(parse_spec(payload, str(path)), path.parent)


def with_dataset_from(spec: JobSpec, folder: Path) -> JobSpec:
    """A relative dataset path is read from the job file's folder (as docker-compose reads its
    paths), and stored absolute: trials run in other directories, on other machines."""
    source = spec.dataset.source
    if source.startswith("builtin:") or Path(source).is_absolute():
        return spec
    dataset = spec.dataset.model_copy(update={"source": str((folder / source).resolve())})
    return spec.model_copy(update={"dataset": dataset})


def require_absolute_dataset(spec: JobSpec) -> None:
    """Jobs sent over HTTP have no job file to be relative to."""
    source = spec.dataset.source
    if not source.startswith("builtin:") and not Path(source).is_absolute():
        raise SpecError(
            f"dataset.source={source!r} is a relative path; give the absolute path the cluster's "
            "machines see (or submit the job file with `automl submit`, which resolves it)"
        )


def format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling (see examples/ for every field)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "string_type" and isinstance(item["input"], bool | int | float):
            message += (f", got {item['input']!r} (YAML reads an unquoted yes/no/on/off/true/false "
                        "or number as that type: put the value in quotes)")
        if not item["loc"] and re.match(r"[a-z_.]+[:=]", message):  # names its field itself
            lines.append(f"  {message}")
        else:
            lines.append(f"  {field}: {message}")
    return "\n".join(lines)
