"""The job spec: a YAML file validated by pydantic before anything is stored or started.

Errors name the field (`budget.n_trials`, `space.lr`) and what is allowed; nothing half-valid
gets through, so a job either starts with a spec the engine can run or is refused whole.
"""

from __future__ import annotations

import math
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
# A job id names its study, its Ray run folder and its log file: keep it to what every one of
# them takes as is (`name-xxxxxx` from `new_job_id`, or a `--job-id` of the same form).
JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
MAX_STRING = 4096  # longer than any path or timm name; a spec is a few KB
MAX_ITEMS = 1000  # choices in one list, keys in one mapping
MAX_TIME_LIMIT = 365 * 86400.0


class SpecError(ValueError):
    """An invalid job spec; the message lists every problem, each with its field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetSpec(_Strict):
    source: str = Field(description="ImageFolder directory, CSV manifest, parquet file or folder "
                        "of shards, save_to_disk folder, or builtin:digits")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 0
    image_column: str | None = Field(None, min_length=1, description="parquet/arrow tables only")
    label_column: str | None = Field(None, min_length=1, description="parquet/arrow tables only")

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
        if value is not None and not 0 < value <= MAX_TIME_LIMIT:
            raise ValueError("time_limit must be positive and at most 365 days (seconds, or like "
                             "'30m', '2h', '7d')")
        return value


class ResourcesSpec(_Strict):
    # below a tenth of a CPU, hundreds of trials would share one core and none would progress
    cpu: float = Field(1.0, ge=0.1, le=1024, description="CPUs per trial")
    gpu: float = Field(0.0, ge=0, le=64, description="GPUs per trial; fractions share a GPU")


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
    max_concurrent_trials: int = Field(1, ge=1, le=256)
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(
        2, ge=0, le=20, description="retries of a failed trial (a dead worker, an error)"
    )
    strategy: StrategySpec = StrategySpec()
    space: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_data(cls, payload: Any) -> Any:
        """Every number finite, every string and list of a sane size, anywhere in the spec
        (`space` and the strategy options included, which no field type checks): a NaN or an
        infinity cannot be stored as JSON, and a megabyte string is nobody's backbone name."""
        problem = _first_unfit(payload, "")
        if problem is not None:
            raise ValueError(problem)
        return payload

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
            **{key: value for key, value in (("image_column", self.dataset.image_column),
                                             ("label_column", self.dataset.label_column))
               if value is not None},
            "objective": self.objective.metric,
            "epochs": self.budget.max_epochs,
        }


def _first_unfit(value: Any, where: str) -> str | None:
    """The first value a spec may not hold, as `field: problem`; None when all are fine."""
    name = where or "(top level)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number; give a finite value"
    if isinstance(value, str) and len(value) > MAX_STRING:
        return f"{name}: a string of {len(value):,} characters (at most {MAX_STRING:,})"
    if isinstance(value, dict | list) and len(value) > MAX_ITEMS:
        return f"{name}: {len(value):,} entries (at most {MAX_ITEMS:,})"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_unfit(item, f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_unfit(item, f"{name}[{index}]")
            if found is not None:
                return found
    return None


def check_job_id(job_id: str) -> None:
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise SpecError(
            f"job id {_excerpt(job_id, 70)} is not one: lowercase letters, digits and dashes, "
            "starting with a letter or digit, at most 64 characters"
        )


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
    """Relative paths (the dataset, a weights file) are read from the job file's folder, as
    docker-compose reads its paths, and stored absolute: trials run in other directories, on
    other machines."""
    source = spec.dataset.source
    changes: dict[str, Any] = {}
    if not source.startswith("builtin:") and not Path(source).is_absolute():
        changes["dataset"] = spec.dataset.model_copy(update={"source": str((folder / source).resolve())})
    weights = spec.space.get("pretrained")

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            return str((folder / value).resolve())
        return value

    if isinstance(weights, str | list):
        fixed = [absolute(v) for v in weights] if isinstance(weights, list) else absolute(weights)
        if fixed != weights:
            changes["space"] = {**spec.space, "pretrained": fixed}
    return spec.model_copy(update=changes) if changes else spec


def paths_read(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, path) of every file or folder the job's trials read."""
    out = []
    if not spec.dataset.source.startswith("builtin:"):
        out.append(("dataset.source", spec.dataset.source))
    out.extend(("space.pretrained", value) for value in spec.search_space().pretrained()
               if isinstance(value, str))
    return out


def require_absolute_dataset(spec: JobSpec) -> None:
    """Jobs sent over HTTP have no job file to be relative to."""
    for field, value in paths_read(spec):
        if not Path(value).is_absolute():
            raise SpecError(
                f"{field}={value!r} is a relative path; give the absolute path the cluster's "
                "machines see (or submit the job file with `automl submit`, which resolves it)"
            )


def require_under_roots(spec: JobSpec, roots: tuple[Path, ...]) -> None:
    """A job sent over HTTP reads only under the service's dataset roots, judged after `..` and
    symlinks are resolved: the runner may read much more (it runs as whoever deployed it), and a
    token must not be a key to its files. Whether a path exists is not said either."""
    require_absolute_dataset(spec)
    for field, value in paths_read(spec):
        resolved = Path(value).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            where = (f"the dataset roots ({':'.join(map(str, roots))})" if roots else
                     "any dataset root: this service has none (AUTOML_DATASET_ROOTS), so jobs "
                     "sent over HTTP may use builtin datasets only")
            raise SpecError(
                f"{field}={_excerpt(value)} is outside {where}; put the files under a root, or "
                "ask the operator to add one"
            )


def _excerpt(value: str, limit: int = 120) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


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
