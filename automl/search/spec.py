"""The job spec: pydantic models, validated before anything is stored or started.

Errors name the field (`budget.n_trials`, `space.lr`) and what is allowed; nothing half-valid
gets through, so a job either starts with a spec the engine can run or is refused whole.
Validation reads no file (a job file is read by `job_file`, its weights by `paths`) and builds
the search space once: every later part of the job asks the validated spec for it.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from automl.errors import SpecError
from automl.search.bounds import MAX_TIME_LIMIT, first_unfit
from automl.search.durations import Duration, parse_duration
from automl.search.options import options_problem
from automl.search.overrides import SpaceError
from automl.search.ranking import direction, maximizes
from automl.search.space import SearchSpace
from automl.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER, PRUNERS, SAMPLERS, Strategy
from automl.search.validation_errors import format_errors
from workers.config import OBJECTIVES
from workers.model.target import COSTS, LatencyTarget


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
        natural = direction(self.metric)
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
        return maximizes(self.metric)

    @property
    def mode(self) -> Literal["max", "min"]:
        return "max" if self.maximize else "min"

    @property
    def front_costs(self) -> list[str]:
        """The costs a Pareto front trades the metric against (none: one objective)."""
        return [m for m in self.metrics or [] if m in COSTS]

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
    """One trial's share of the cluster. With `workers` > 1 a trial is a data-parallel group
    (Ray Train workers inside the Tune trial, `workers.tune_adapter`), and `cpu`/`gpu` are each
    worker's: the group holds `workers` times them, reserved together or not at all."""

    # below a tenth of a CPU, hundreds of trials would share one core and none would progress
    cpu: float = Field(1.0, ge=0.1, le=1024, description="CPUs per trial (per worker)")
    gpu: float = Field(0.0, ge=0, le=64,
                       description="GPUs per trial (per worker); fractions share a GPU")
    workers: int = Field(1, ge=1, le=1024,
                         description="data-parallel processes per trial (1: one process)")

    @model_validator(mode="after")
    def _whole_gpus_in_groups(self) -> ResourcesSpec:
        """NCCL cannot put two ranks of one group on one GPU, and a fraction of a GPU per rank
        would let Ray do just that."""
        if self.workers > 1 and self.gpu and self.gpu != int(self.gpu):
            raise ValueError(f"gpu={self.gpu:g} per worker: a multi-worker trial (workers="
                             f"{self.workers}) takes whole GPUs per worker")
        return self


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
    pruner: Literal["hyperband", "sha", "median", "none", "freeze-thaw"] = DEFAULT_PRUNER  # type: ignore[assignment]
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
            constructor = SAMPLERS[kind] if field == "sampler_options" else PRUNERS[kind]
            problem = options_problem(field, kind, constructor, options)
            if problem:
                raise ValueError(problem)
        return self


class EvaluationSpec(_Strict):
    """The evaluation every published model gets on the test split (`automl evaluate`'s)."""

    corruptions: bool = Field(True, description="score the corruption suite too (18 more passes "
                              "over the test split)")
    seed: int = Field(0, ge=0, description="the corruptions' random seed")


class QuantizeSpec(_Strict):
    """int8 for the deployable student: onnxruntime static quantization, kept only when it loses
    at most `max_drop` of test accuracy against the float student (`workers.quantize`)."""

    int8: bool = True
    max_drop: float = Field(0.01, ge=0, lt=1, description="accuracy the int8 model may lose "
                            "(0.01: one point)")
    calibration: int = Field(256, ge=1, le=100_000, description="training images to calibrate on")


class MonitorSpec(_Strict):
    """The thresholds `automl monitor` judges the served model by (`automl deploy` copies them
    into the version's automl.json; the command's flags override them)."""

    psi: float = Field(0.2, gt=0, le=10, description="population stability index above which "
                       "a distribution (classes, confidence, an input feature) has drifted")
    accuracy_drop: float = Field(0.05, ge=0, le=1, description="how far accuracy or macro F1 "
                                 "from feedback labels may fall below the job's test score")
    min_predictions: int = Field(30, ge=1, le=10_000_000, description="fewer predictions "
                                 "(labels, for the scores) in a window: not judged")


class DistillSpec(_Strict):
    """The stage after the search: its best model (the teacher) taught to a student that fits
    the deployment target, in trials of their own (study JOB-distill)."""

    limits: dict[str, float] | None = Field(
        None, description="the student's limits on costs (default: objective.limits)")
    student: str | list[str] = Field(
        "auto", description="auto (the search's best trial that fits the limits, else the "
        "space's cheapest backbone), a timm backbone, or a list of them to search over")
    epochs: int | None = Field(None, ge=1, le=1000, description="default: budget.max_epochs")
    trials: int = Field(8, ge=1, le=10_000)
    teacher_trial: int | None = Field(None, ge=0, description="a kept trial as the teacher "
                                      "(default: the published best)")

    @field_validator("student")
    @classmethod
    def _known_students(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or len(set(names)) != len(names):
            raise ValueError("name one student, or a list of distinct ones")
        if names == ["auto"]:
            return value
        from workers.config import ConfigError
        from workers.model.backbone import check_backbone

        for name in names:
            try:
                check_backbone(name)
            except ConfigError as error:
                raise ValueError(f"{error}; name a timm model, or student: auto") from None
        return value

    @field_validator("limits")
    @classmethod
    def _costs(cls, limits: dict[str, float] | None) -> dict[str, float] | None:
        for name, limit in (limits or {}).items():
            if name not in COSTS:
                raise ValueError(f"distill.limits.{name}: unknown cost; limits take "
                                 f"{', '.join(COSTS)}")
            if not limit > 0:
                raise ValueError(f"distill.limits.{name}={limit}: a limit must be above 0")
        return limits

    @property
    def students(self) -> tuple[str, ...] | None:
        """The named students; None: auto."""
        names = (self.student,) if isinstance(self.student, str) else tuple(self.student)
        return None if names == ("auto",) else names


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
    evaluation: EvaluationSpec = EvaluationSpec()
    distill: DistillSpec | None = None
    quantize: QuantizeSpec = QuantizeSpec()
    monitor: MonitorSpec = MonitorSpec()

    @model_validator(mode="before")
    @classmethod
    def _plain_data(cls, payload: Any) -> Any:
        """Every number finite, every string, key and list of a sane size and every string free
        of control characters, anywhere in the spec (`space` and the strategy options
        included, which no field type checks): a NaN or an infinity cannot be stored as JSON,
        a megabyte string is nobody's backbone name, and a NUL in a path or URI is an error
        deep in the file system or a client library, not a refusal that names the field."""
        problem = first_unfit(payload, "")
        if problem is not None:
            raise ValueError(problem)
        return payload

    # built once, when the spec is validated: every part of a job asks for it
    _space: SearchSpace | None = PrivateAttr(default=None)
    # set once its weights files loaded (`automl.search.paths.check_weights`): a job file's are
    # checked when it is loaded, and its driver, in the same process, need not read them again
    _weights_checked: bool = PrivateAttr(default=False)

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
            if s.pruner in ("hyperband", "median", "freeze-thaw"):
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

    @model_validator(mode="after")
    def _student_has_a_target(self) -> JobSpec:
        if self.distill is not None and self.distill.students is None \
                and not self.distill_limits():
            raise ValueError("distill.student: auto picks the student that fits the target, and "
                             "there is none: set distill.limits (or objective.limits), e.g. "
                             "{latency_ms: 5}, or name the student")
        return self

    def distill_limits(self) -> dict[str, float]:
        """The student's limits: the distill stage's own, else the job's."""
        if self.distill is None:
            return {}
        own = self.distill.limits
        return dict(self.objective.limits if own is None else own)

    def strategy_object(self, portfolio: tuple[dict[str, Any], ...] = ()) -> Strategy:
        """The strategy this spec asks for (the job's driver adds the portfolio for its data)."""
        s, o = self.strategy, self.objective
        return Strategy(
            space=self.search_space(),
            direction=direction(o.metric),
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


def parse_spec(payload: Any, source: str = "job spec") -> JobSpec:
    if not isinstance(payload, dict):
        raise SpecError(f"{source}: expected a mapping of fields (name, dataset, budget, ...)")
    try:
        return JobSpec.model_validate(payload)
    except ValidationError as error:
        raise SpecError(f"{source} is invalid:\n" + format_errors(error)) from None
