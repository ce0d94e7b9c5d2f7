"""The job spec: a YAML file validated by pydantic before anything is stored or started.

Errors name the field (`budget.n_trials`, `space.lr`) and what is allowed; nothing half-valid
gets through, so a job either starts with a spec the engine can run or is refused whole.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import secrets
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from automl.errors import SpecError, UserError
from automl.search.space import SearchSpace, SpaceError
from automl.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER, PRUNERS, SAMPLERS, Strategy
from workers.config import OBJECTIVES
from workers.data.roots import is_under
from workers.model.costs import COSTS, LatencyTarget

Duration = float | str
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# A job id names its study, its Ray run folder and its log file: keep it to what every one of
# them takes as is (`name-xxxxxx` from `new_job_id`, or a `--job-id` of the same form).
JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
MAX_STRING = 4096  # longer than any path or timm name; a spec is a few KB
MAX_ITEMS = 1000  # choices in one list, keys in one mapping
MAX_KEY = 200  # characters of one mapping key: far longer than any field or option name
MAX_DEPTH = 32  # levels of nesting: a spec has four or five
MAX_VALUES = 100_000  # values a YAML spec stands for, aliases expanded: a spec has a few hundred
MAX_TIME_LIMIT = 365 * 86400.0
MAX_OPTION = 10_000  # |x| of a sampler or pruner option: far above any useful count or weight
MAX_OPTION_TEXT = 64  # characters of a string option ("auto", a restart strategy's name)
# C0, DEL and C1: no path, URI, name or choice has one, and a NUL cannot reach the file system
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetSpec(_Strict):
    source: str = Field(description="ImageFolder directory, CSV manifest, parquet file or folder "
                        "of shards, save_to_disk folder, or builtin:digits")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="numpy seeds are 0..2**32-1")
    image_column: str | None = Field(None, min_length=1, description="parquet/arrow tables only")
    label_column: str | None = Field(None, min_length=1, description="parquet/arrow tables only")
    name: str | None = Field(None, min_length=1, max_length=100,
                             description="how the model card names it (default: the source's "
                             "last folder)")

    @model_validator(mode="after")
    def _leaves_training_data(self) -> DatasetSpec:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave training images (sum < 1)")
        return self


def dataset_name(source: str, name: str | None = None) -> str:
    """How a published model names its dataset: `dataset.name`, else the source's last folder
    (the folder of a manifest or a parquet file), never the server's path to it: a model card
    is pushed to the Hugging Face Hub as it is."""
    if name:
        return name
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    path = Path(source)
    folder = path.parent if path.is_file() else path
    return folder.name or "images"


class LatencySpec(_Strict):
    """The deployment target a configuration's latency is measured on (by the trial's worker)."""

    device: Literal["cpu", "cuda"] = "cpu"
    batch: int = Field(1, ge=1, le=256)
    threads: int = Field(1, ge=1, le=256)
    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"

    def target(self) -> LatencyTarget:
        return LatencyTarget(self.device, self.batch, self.threads, self.runtime)


class ObjectiveSpec(_Strict):
    """One validation metric (`metric`), or a Pareto front of it against costs (`metrics`),
    optionally under hard `limits` on costs: the best model that fits its deployment target."""

    metric: Literal[OBJECTIVES] = "val_accuracy"  # type: ignore[valid-type]
    direction: Literal["maximize", "minimize"] | None = None
    metrics: list[str] | None = Field(
        None, description="a Pareto front: one validation metric and at least one cost")
    limits: dict[str, float] = Field(
        default_factory=dict, description="upper bounds on costs: latency_ms, params_m, macs_g")
    latency: LatencySpec = LatencySpec()

    @model_validator(mode="before")
    @classmethod
    def _metric_of_the_front(cls, payload: Any) -> Any:
        """With `metrics`, `metric` is the validation metric among them (said or not)."""
        if isinstance(payload, dict) and isinstance(payload.get("metrics"), list) \
                and "metric" not in payload:
            scored = [m for m in payload["metrics"] if m in OBJECTIVES]
            if scored:
                return {**payload, "metric": scored[0]}
        return payload

    @model_validator(mode="after")
    def _consistent(self) -> ObjectiveSpec:
        natural = "minimize" if self.metric == "val_loss" else "maximize"
        if self.direction is not None and self.direction != natural:
            raise ValueError(f"{self.metric} can only be {natural}d; drop `direction` or fix it")
        for name, limit in self.limits.items():
            if name in OBJECTIVES:
                raise ValueError(
                    f"objective.limits.{name}: a limit is an upper bound on a cost, and {name} "
                    f"is what the search {natural}s: it contradicts the objective; use "
                    "budget.target to stop at a value")
            if name not in COSTS:
                raise ValueError(f"objective.limits.{name}: unknown cost; limits take "
                                 f"{', '.join(COSTS)}")
            if not limit > 0:
                raise ValueError(f"objective.limits.{name}={limit}: a limit must be above 0")
        if self.metrics is not None:
            self._check_front(self.metrics)
        return self

    def _check_front(self, metrics: list[str]) -> None:
        twice = sorted({m for m in metrics if metrics.count(m) > 1})
        if twice:
            raise ValueError(f"objective.metrics: {', '.join(twice)} named twice")
        unknown = [m for m in metrics if m not in OBJECTIVES and m not in COSTS]
        if unknown:
            raise ValueError(f"objective.metrics: unknown {', '.join(unknown)}; a front takes "
                             f"one of {', '.join(OBJECTIVES)} and costs {', '.join(COSTS)}")
        scored = [m for m in metrics if m in OBJECTIVES]
        if len(scored) != 1 or len(metrics) < 2:
            raise ValueError("objective.metrics: a Pareto front is one validation metric and at "
                             f"least one cost, e.g. [val_accuracy, latency_ms]; got {metrics}")
        if scored[0] != self.metric:
            raise ValueError(f"objective.metric={self.metric} is not the validation metric of "
                             f"objective.metrics ({scored[0]}); drop one")

    @property
    def maximize(self) -> bool:
        return self.metric != "val_loss"

    @property
    def mode(self) -> Literal["max", "min"]:
        return "max" if self.maximize else "min"

    @property
    def front_costs(self) -> list[str]:
        """The costs a Pareto front trades the metric against (none: one objective)."""
        return [m for m in self.metrics or [] if m in COSTS]

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        """The study's: the metric's, then each front cost's (minimized)."""
        minimized: list[Literal["maximize", "minimize"]] = ["minimize"] * len(self.front_costs)
        return ["maximize" if self.maximize else "minimize", *minimized]

    @property
    def costs_needed(self) -> list[str]:
        """The costs a trial must know before it trains: its limits' and its front's."""
        return sorted(set(self.limits) | set(self.front_costs))


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


class CheckpointsSpec(_Strict):
    keep_trials: int = Field(
        3, ge=1, le=1000,
        description="complete trials whose best checkpoint is kept (the best ones)",
    )


class TrackingSpec(_Strict):
    mlflow: str | None = Field(
        None, min_length=1,
        description="MLflow tracking URI: http(s)://server, sqlite:///path.db or a folder; "
        "default AUTOML_MLFLOW_URI (none: no tracking)",
    )
    experiment: str = Field("automl", min_length=1, max_length=256,
                            description="the MLflow experiment the job's runs go in")


class StrategySpec(_Strict):
    sampler: Literal["tpe", "random", "gp", "cmaes", "nsga2"] = DEFAULT_SAMPLER  # type: ignore[assignment]
    pruner: Literal["hyperband", "sha", "median", "none"] = DEFAULT_PRUNER  # type: ignore[assignment]
    seed: int | None = None
    warm_start: bool = Field(True, description="try the strategy's portfolio of strong configs first")
    sampler_options: dict[str, Any] = Field(default_factory=dict)
    pruner_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _plain_options(self) -> StrategySpec:
        """Options are keywords of the chosen Optuna class's constructor that take a plain value
        (a count, a weight, a flag, a name), within bounds: a callable or a sampler cannot come
        from JSON, the job sets the seed itself, and a billion EI candidates would stall
        every trial's sampling on the driver."""
        for field, kind, options in (("sampler_options", self.sampler, self.sampler_options),
                                     ("pruner_options", self.pruner, self.pruner_options)):
            takes = _plain_keywords(SAMPLERS[kind] if field == "sampler_options" else PRUNERS[kind])
            for name, value in options.items():
                if name not in takes:
                    offered = ", ".join(sorted(takes)) or "none"
                    raise ValueError(f"strategy.{field}.{name}: not an option of the {kind} "
                                     f"{field.split('_')[0]}; it takes {offered}")
                problem = _option_problem(value, takes[name])
                if problem:
                    raise ValueError(f"strategy.{field}.{name}: {problem}")
        return self


_PLAIN = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_SET_BY_THE_JOB = {"seed"}  # strategy.seed


@functools.cache
def _plain_keywords(kind: type) -> dict[str, tuple[type, ...]]:
    """A constructor's keywords whose annotation is only plain types, with those types."""
    out = {}
    for name, parameter in inspect.signature(kind).parameters.items():
        if name in _SET_BY_THE_JOB or parameter.kind in (parameter.VAR_KEYWORD,
                                                         parameter.VAR_POSITIONAL):
            continue
        annotation = parameter.annotation
        words = [w.strip() for w in (annotation if isinstance(annotation, str)
                                     else getattr(annotation, "__name__", "?")).split("|")]
        if words and all(w in _PLAIN for w in words):
            out[name] = tuple(_PLAIN[w] for w in words)
    return out


def _option_problem(value: Any, types: tuple[type, ...]) -> str | None:
    """Why `value` cannot be an option of these plain types (None: it can)."""
    wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    if isinstance(value, bool):
        fits = bool in types
    elif isinstance(value, int):
        fits = int in types or float in types
    else:
        fits = isinstance(value, tuple(t for t in types if t is not bool))
    if not fits:
        kind = {bool: "true/false", int: "whole number", float: "number", str: "string",
                list: "list", dict: "mapping"}.get(type(value), type(value).__name__)
        return f"takes {wanted}, not a {kind}"
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_OPTION:
        return f"{value:g} is beyond +-{MAX_OPTION:,}; give a smaller value"
    if isinstance(value, str) and len(value) > MAX_OPTION_TEXT:
        return f"a string of {len(value):,} characters (at most {MAX_OPTION_TEXT})"
    return None


class JobSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="lowercase, digits, dashes")
    dataset: DatasetSpec
    objective: ObjectiveSpec = ObjectiveSpec()
    budget: BudgetSpec = BudgetSpec()
    max_concurrent_trials: int = Field(1, ge=1, le=256)
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(
        2, ge=0, le=20, description="retries of a trial whose worker or node was lost, from its "
        "last checkpoint (an error the trial raises itself fails it at once)"
    )
    strategy: StrategySpec = StrategySpec()
    checkpoints: CheckpointsSpec = CheckpointsSpec()
    tracking: TrackingSpec = TrackingSpec()
    space: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_data(cls, payload: Any) -> Any:
        """Every number finite, every string, key and list of a sane size and every string free
        of control characters, anywhere in the spec (`space` and the strategy options
        included, which no field type checks): a NaN or an infinity cannot be stored as JSON,
        a megabyte string is nobody's backbone name, and a NUL in a path or URI is an error
        deep in the file system or a client library, not a refusal that names the field."""
        problem = _first_unfit(payload, "")
        if problem is not None:
            raise ValueError(problem)
        return payload

    # built once, when the spec is validated: every part of a job asks for it
    _space: SearchSpace | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _space_is_runnable(self) -> JobSpec:
        try:
            self._space = SearchSpace.from_spec(self.space, self.budget.max_epochs)
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
        if self.objective.front_costs:
            if s.pruner in ("hyperband", "median"):
                raise ValueError(f"strategy.pruner: {s.pruner} cannot prune a Pareto front "
                                 "(Optuna's pruners take one objective); use sha (successive "
                                 "halving by Pareto rank) or none")
            if s.sampler == "cmaes":
                raise ValueError("strategy.sampler: cmaes optimizes one objective; for a Pareto "
                                 "front use random, tpe, gp or nsga2")
        strategy = self.strategy_object()
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

    def strategy_object(self, portfolio: tuple[dict[str, Any], ...] = ()) -> Strategy:
        """The strategy this spec asks for (the job's driver adds the portfolio for its data)."""
        s, o = self.strategy, self.objective
        return Strategy(
            space=self.search_space(),
            direction="maximize" if o.maximize else "minimize",
            metric=o.metric,
            sampler=s.sampler,
            pruner=s.pruner,
            seed=s.seed,
            warm_start=s.warm_start,
            sampler_options=dict(s.sampler_options),
            pruner_options=dict(s.pruner_options),
            portfolio=portfolio,
            front_costs=tuple(o.front_costs),
            limits=dict(o.limits),
        )

    def search_space(self) -> SearchSpace:
        if self._space is None:  # a copy (model_copy) keeps it; only construct() skips it
            self._space = SearchSpace.from_spec(self.space, self.budget.max_epochs)
        return self._space

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


def _first_unfit(value: Any, where: str, depth: int = 0) -> str | None:
    """The first value a spec may not hold, as `field: problem`; None when all are fine. The
    field is named in at most `MAX_KEY` characters, and no value is quoted."""
    name = _field(where)
    if depth > MAX_DEPTH:
        return f"{name}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number; give a finite value"
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            return f"{name}: a string of {len(value):,} characters (at most {MAX_STRING:,})"
        return _control_character(name, value)
    if isinstance(value, dict | list) and len(value) > MAX_ITEMS:
        return f"{name}: {len(value):,} entries (at most {MAX_ITEMS:,})"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                if len(key) > MAX_KEY:
                    return f"{name}: a key of {len(key):,} characters (at most {MAX_KEY})"
                if (problem := _control_character(f"{name}: a key", key)) is not None:
                    return problem
            found = _first_unfit(item, f"{where}.{key}" if where else str(key), depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _first_unfit(item, f"{name}[{index}]", depth + 1)
            if found is not None:
                return found
    return None


def _control_character(name: str, text: str) -> str | None:
    found = _CONTROL.search(text)
    if found is None:
        return None
    return (f"{name}{'' if name.endswith(': a key') else ':'} holds a control character "
            f"(U+{ord(found.group()):04X}, character {found.start() + 1}); no path, URI or name "
            "has one: remove it")


def _field(where: str) -> str:
    """A field's dotted name for a message, cut to `MAX_KEY` characters."""
    if not where:
        return "(top level)"
    return where if len(where) <= MAX_KEY else where[:MAX_KEY] + "..."


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


class YamlRefused(yaml.MarkedYAMLError):
    """A YAML document refused for its size once its aliases are expanded, or its depth."""


class _Loader(yaml.SafeLoader):
    """A SafeLoader (no arbitrary objects) that bounds what a document stands for, before it
    is constructed, and that reads `1e-4` as a number.

    Composing is cheap, and so is construction: an alias is one shared object. The cost comes
    in whatever walks the result as a tree (the spec's checks, pydantic, JSON), where a 600-byte
    "billion laughs" document of aliases nested nine deep stands for 9**9 values. So each node
    composed is counted as it would be expanded (`MAX_VALUES`), and nesting is bounded by the
    spec's own `MAX_DEPTH` before the composer recurses into it: 20,000 levels would otherwise
    end in a RecursionError.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open = 0  # collections being composed around the current node
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth below)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        mark = self.peek_event().start_mark
        if self._open > MAX_DEPTH:
            raise YamlRefused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
        alias = self.check_event(yaml.AliasEvent)
        self._open += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open -= 1
        assert node is not None  # typed optional; every event composed gives a node
        if alias:
            if id(node) not in self._expanded:  # still being composed: it holds itself
                raise YamlRefused(None, None, "an alias inside its own anchor (a structure "
                                  "that holds itself)", mark)
        else:
            self._expanded[id(node)] = self._measure(node)
        values, below = self._expanded[id(node)]
        if values > MAX_VALUES:
            raise YamlRefused(None, None, f"more than {MAX_VALUES:,} values once its aliases "
                              "are expanded (a job spec has a few hundred)", mark)
        if self._open + below > MAX_DEPTH:
            raise YamlRefused(None, None, f"nested deeper than {MAX_DEPTH} levels once its "
                              "aliases are expanded", mark)
        return node

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """(values, levels of nesting) `node` stands for; its children are measured already."""
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            return 1, 0
        parts = [self._expanded[id(child)] for child in children]
        return 1 + sum(v for v, _ in parts), 1 + max((d for _, d in parts), default=0)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """What is wrong with a YAML text, and where, on one line (PyYAML's own text spans four)."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    refused = "refused" if isinstance(error, YamlRefused) else "invalid YAML"
    return f"{refused}{where}: {problem}"


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
        raise SpecError(f"{path}: {yaml_problem(error)}") from None
    spec = parse_spec(with_paths_from(payload, path.parent), str(path))
    try:
        check_weights(spec)
    except SpecError as error:
        raise SpecError(f"{path} is invalid:\n  {error}") from None
    return spec


def with_paths_from(payload: Any, folder: Path) -> Any:
    """Relative paths (the dataset, a weights file) are read from the job file's folder, as
    docker-compose reads its paths, and stored absolute: trials run in other directories, on
    other machines. Done to the payload, before it is validated; the weights file is opened
    once the spec is valid, from wherever the command runs."""

    def absolute(value: Any, builtin_ok: bool = False) -> Any:
        if not isinstance(value, str) or (builtin_ok and value.startswith("builtin:")):
            return value
        return value if Path(value).expanduser().is_absolute() else str((folder / value).resolve())

    if not isinstance(payload, dict):
        return payload
    payload = dict(payload)
    if isinstance(payload.get("dataset"), dict) and "source" in payload["dataset"]:
        dataset = payload["dataset"] = dict(payload["dataset"])
        dataset["source"] = absolute(dataset["source"], builtin_ok=True)
    space = payload.get("space")
    if isinstance(space, dict) and "pretrained" in space:
        weights = space["pretrained"]
        payload["space"] = {**space, "pretrained": [absolute(v) for v in weights]
                            if isinstance(weights, list) else absolute(weights)}
    return payload


def paths_read(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, path) of every file or folder the job's trials read: the spec names no other."""
    out = []
    if not spec.dataset.source.startswith("builtin:"):
        out.append(("dataset.source", spec.dataset.source))
    out.extend(("space.pretrained", value) for value in spec.search_space().pretrained()
               if isinstance(value, str))
    return out


def check_weights(spec: JobSpec) -> None:
    """Each weights file the space names loads as a state dict, or a SpecError naming it.

    Not part of validation, which reads no file: a job file's weights are checked when it is
    loaded, a job sent over HTTP's once its paths are found under the dataset roots (before,
    what the check says would tell what is on the server's disk), and every job's again on its
    driver, so that a bad file fails the job once rather than each of its trials.
    """
    from workers.model.weights import check_weights_file

    for field, value in paths_read(spec):
        if field == "space.pretrained":
            try:
                check_weights_file(value)
            except UserError as error:
                raise SpecError(f"{field}: {error}") from None


def require_absolute_dataset(spec: JobSpec) -> None:
    """Jobs sent over HTTP have no job file to be relative to."""
    for field, value in paths_read(spec):
        if not Path(value).is_absolute():
            raise SpecError(
                f"{field}={_excerpt(value)} is a relative path; give the absolute path the "
                "cluster's machines see (or submit the job file with `automl submit`, which "
                "resolves it)"
            )


def require_under_roots(spec: JobSpec, roots: tuple[Path, ...]) -> None:
    """A job sent over HTTP reads only under the service's dataset roots, judged after `..` and
    symlinks are resolved: the runner may read much more (it runs as whoever deployed it), and a
    token must not be a key to its files. Every path the spec names is judged before any is
    opened, and every path outside gets the same answer, so nothing is said of what is there or
    whether it exists, nor where the roots are (the operator's setting); the weights files are
    checked after."""
    require_absolute_dataset(spec)
    for field, value in paths_read(spec):
        if not is_under(value, roots):
            where = ("the dataset roots (AUTOML_DATASET_ROOTS)" if roots else
                     "any dataset root: this service has none (AUTOML_DATASET_ROOTS), so jobs "
                     "sent over HTTP may use builtin datasets only")
            raise SpecError(
                f"{field}={_excerpt(value)} is outside {where}; put the files under a root, or "
                "ask the operator to add one"
            )
    check_weights(spec)


def require_tracking_server(spec: JobSpec, served: str | None) -> None:
    """A job sent over HTTP tracks to the service's own MLflow store (`served`,
    AUTOML_MLFLOW_URI) or to none: any other URI would have the runner write wherever the token
    holder names (a local one), or call any server the runner can reach and report what it
    answered (a remote one: an internal service)."""
    uri = spec.tracking.mlflow
    if uri is None or (served is not None and uri.rstrip("/") == served.rstrip("/")):
        return
    if served is None:
        raise SpecError(
            f"tracking.mlflow={_excerpt(uri)}: jobs sent over HTTP track only to this service's "
            "MLflow server, and it has none (AUTOML_MLFLOW_URI is not set); leave "
            "tracking.mlflow out"
        )
    raise SpecError(
        f"tracking.mlflow={_excerpt(uri)}: jobs sent over HTTP track only to this service's "
        "MLflow server (AUTOML_MLFLOW_URI); leave tracking.mlflow out to use it"
    )


def _excerpt(value: str, limit: int = 120) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


MAX_ERRORS = 20  # problems listed of one spec; a spec with more has a bigger one to fix first
MAX_FIELD_PART = 64  # characters of one part of a field's name, in a list of problems


def format_errors(error: ValidationError) -> str:
    """One line per problem, each naming its field; names cut short, at most `MAX_ERRORS`."""
    lines = []
    problems = error.errors()
    for item in problems[:MAX_ERRORS]:
        field = ".".join(field_part(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling (see examples/ for every field)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "string_type" and isinstance(item["input"], bool | int | float):
            message += (f", got {item['input']!r} (YAML reads an unquoted yes/no/on/off/true/false "
                        "or number as that type: put the value in quotes)")
        names_itself = re.match(r"(?:\(top level\)|[a-z_.]+)[:=]", message) and (
            not item["loc"] or message.startswith(f"{field}."))
        if names_itself:
            lines.append(f"  {message}")
        else:
            lines.append(f"  {field}: {message}")
    if len(problems) > MAX_ERRORS:
        lines.append(f"  ... and {len(problems) - MAX_ERRORS} more")
    return "\n".join(lines)


def field_part(part: str | int) -> str:
    """One part of a field's name as an error gives it: an unknown key may be any size."""
    text = str(part)
    return text if len(text) <= MAX_FIELD_PART else text[:MAX_FIELD_PART] + "..."
