"""The search strategy: sampler, pruner, space and warm start, as one object.

Ray Tune jobs (through the bridge) and the replay benchmark drive the very same object, so what
the benchmark measures is what jobs run. It knows nothing of Ray: it makes and loads the study,
and turns an Optuna trial into a trial configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from automl.search._optuna import (
    FastHyperbandPruner,
    FastSuccessiveHalvingPruner,
    storage_of,
    study_id,
    trial_id,
    with_groups_once,
)
from automl.search.feasible import FeasibleSampler
from automl.search.freeze_thaw import FreezeThaw, PromotionAsha
from automl.search.pareto import ParetoSuccessiveHalvingPruner
from automl.search.portfolio import PORTFOLIOS
from automl.search.ranking import best_value
from automl.search.space import SearchSpace

# What a job gets when its spec names no strategy: the portfolio for the dataset's size, then
# random sampling with successive halving from epoch 2. Chosen by the replay benchmark over
# recorded fine-tuning runs, judged on datasets it was not tuned on (docs/benchmarks.md: lower
# regret than Ray Tune's usual ASHA and than random sampling at every budget there).
DEFAULT_SAMPLER = "random"
DEFAULT_PRUNER = "sha"
# The Optuna class each name builds, whose constructor's keywords its options are (the spec
# checks them against it; a front's sha takes a subset of sha's, and the fast pruners subclass
# Optuna's with the same keywords)
SAMPLERS: dict[str, Any] = {
    "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler, "cmaes": optuna.samplers.CmaEsSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
FREEZE_THAW = "freeze-thaw"  # pause a trial below the cut (its checkpoint kept), resume it later


def freeze_thaw_options(min_resource: int = 2, reduction_factor: int = 3,
                        learned: bool = True, brackets: bool = False, early: bool = False) -> None:
    """The options of `pruner: freeze-thaw`: its rungs (`PromotionAsha`'s), and whether a
    paused trial is resumed by the shipped learning-curve model's expected improvement per
    second (`LearnedFreezeThaw`, what the replay measured best) or as soon as promotion-type
    ASHA would promote it (`learned: false`); `brackets: true` is Hyperband with pausing
    (`PausingHyperband`, first rungs min_resource * reduction_factor**s), a replay anchor;
    `early: true` (learned only) also pauses before the first rung when the model expects a new
    configuration to bring more per second (measured worse on the replay, docs/benchmarks.md:
    kept so the measurement can be repeated)."""


PRUNERS: dict[str, Any] = {
    "hyperband": optuna.pruners.HyperbandPruner, "sha": optuna.pruners.SuccessiveHalvingPruner,
    "median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner,
    FREEZE_THAW: freeze_thaw_options,
}


def portfolio_size(n_images: int) -> int:
    """The shipped portfolio's dataset size nearest to `n_images` (on a log scale)."""
    return min(PORTFOLIOS, key=lambda size: abs(math.log(size) - math.log(max(n_images, 1))))


def portfolio_for(n_images: int) -> tuple[dict[str, Any], ...]:
    """The warm-start portfolio for a dataset of `n_images`: what pays off first differs between
    a 1,000-image dataset, where a big model's whole run fits in an hour, and an 80,000-image
    one, where an hour is a few epochs of a small one (README, Benchmarks)."""
    return PORTFOLIOS[portfolio_size(n_images)]


@dataclass
class Strategy:
    space: SearchSpace
    direction: Literal["maximize", "minimize"] = "maximize"
    metric: str = "val_accuracy"
    sampler: str = DEFAULT_SAMPLER
    pruner: str = DEFAULT_PRUNER
    seed: int | None = None
    warm_start: bool = True
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    portfolio: tuple[dict[str, Any], ...] = ()
    # deployment-aware jobs: the costs a Pareto front trades the metric against (minimized),
    # and hard upper bounds on costs
    front_costs: tuple[str, ...] = ()
    limits: dict[str, float] = field(default_factory=dict)
    # freeze-thaw's learning-curve model (a `CurveModel`); None: the one the package ships. The
    # replay sets one fitted without the dataset it scores, and changes nothing else.
    curve_model: Any = None
    _policy: FreezeThaw | None = field(default=None, init=False, repr=False, compare=False)
    _portfolio_done: bool = field(default=False, init=False, repr=False)

    @property
    def max_epochs(self) -> int:
        return self.space.max_epochs

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def directions(self) -> list[Literal["maximize", "minimize"]]:
        minimized: list[Literal["maximize", "minimize"]] = ["minimize"] * len(self.front_costs)
        return [self.direction, *minimized]

    @property
    def metric_names(self) -> list[str]:
        """What the dashboard names the study's values (not "Objective 0")."""
        return [self.metric, *self.front_costs]

    def make_sampler(self, offset: int = 0) -> BaseSampler:
        """`offset` reseeds a reloaded study so a restarted driver does not replay old draws.
        With limits, whatever the sampler, a backbone measured over one is not drawn again."""
        seed = None if self.seed is None else self.seed + offset
        base = self._base_sampler(seed)
        if not self.limits:
            return base
        return FeasibleSampler(base, self.limits, seed, self.space.smallest_img_size())

    def _base_sampler(self, seed: int | None) -> BaseSampler:
        options = dict(self.sampler_options)
        if self.sampler in ("random", "nsga2", "gp"):
            return SAMPLERS[self.sampler](seed=seed, **options)
        if self.sampler == "cmaes":
            options.setdefault("warn_independent_sampling", False)
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        options.setdefault("multivariate", True)
        options.setdefault("group", True)
        options.setdefault("constant_liar", True)
        sampler = optuna.samplers.TPESampler(seed=seed, **options)
        return with_groups_once(sampler) if options["group"] else sampler

    def make_pruner(self) -> BasePruner:
        options = dict(self.pruner_options)
        if self.front_costs and self.pruner == "sha":  # Optuna's pruners cannot rank a front
            options.setdefault("min_resource", 2)
            options.setdefault("reduction_factor", 3)
            return ParetoSuccessiveHalvingPruner(self.front_costs, self.maximize, **options)
        if self.pruner == "hyperband":
            options.setdefault("min_resource", 1)
            options.setdefault("max_resource", self.max_epochs)
            options.setdefault("reduction_factor", 3)
            return FastHyperbandPruner(**options)
        if self.pruner == "sha":
            # first rung after epoch 2: in the recorded runs the epoch-1 accuracy ranks runs by
            # their final one with a Spearman rho of only 0.1-0.5 per dataset (warmup, a low
            # starting lr), epoch 2 with 0.55-0.8
            options.setdefault("min_resource", 2)
            options.setdefault("reduction_factor", 3)
            return FastSuccessiveHalvingPruner(**options)
        if self.pruner == "median":
            options.setdefault("n_startup_trials", 4)
            options.setdefault("n_warmup_steps", 1)
            return optuna.pruners.MedianPruner(**options)
        if self.pruner == FREEZE_THAW:
            freeze_thaw_options(**options)  # checks them; the study's pruner prunes nothing
        return optuna.pruners.NopPruner()

    def freeze_thaw(self) -> FreezeThaw | None:
        """The pause-and-resume policy (`pruner: freeze-thaw`), None for the other pruners:
        the study's pruner is then NopPruner, and the bridge asks this object instead. One
        policy per strategy, made on first use (the shipped curve model is read once): a job's
        searcher and scheduler, and the replay's simulated cluster, ask the same object."""
        if self.pruner != FREEZE_THAW:
            return None
        if self._policy is None:
            self._policy = self._make_freeze_thaw()
        return self._policy

    def _make_freeze_thaw(self) -> FreezeThaw:
        options = dict(self.pruner_options)
        low, factor = int(options.get("min_resource", 2)), int(options.get("reduction_factor", 3))
        if options.get("brackets", False):
            from automl.search.curve_model import PausingHyperband

            return PausingHyperband(self.max_epochs, self.maximize, min_resource=low,
                                    reduction_factor=factor)
        if options.get("learned", True) and self.maximize:
            from automl.search.curve_model import LearnedFreezeThaw  # loads the shipped model

            return LearnedFreezeThaw(self.max_epochs, self.maximize, model=self.curve_model,
                                     min_resource=low, reduction_factor=factor,
                                     early=bool(options.get("early", False)))
        return PromotionAsha(self.max_epochs, self.maximize, min_resource=low,
                             reduction_factor=factor)

    def create_study(
        self, storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any] | None = None
    ) -> optuna.Study:
        """Create the job's study, or load it when the job is being resumed."""
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=self.directions,
                sampler=self.make_sampler(),
                pruner=self.make_pruner(),
            )
            study.set_metric_names(self.metric_names)
            for key, value in (attrs or {}).items():
                study.set_user_attr(key, value)
            return study
        return self.load_study(storage, name, reseed=len(study.trials))

    def load_study(
        self, storage: optuna.storages.BaseStorage, name: str, reseed: int = 0
    ) -> optuna.Study:
        return optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=self.make_sampler(reseed),
            pruner=self.make_pruner(),
        )

    def ask(self, study: optuna.Study) -> optuna.Trial:
        """A new trial: the next portfolio configuration while warm starting, else the sampler's.

        Enqueued one at a time, just before it is asked for, so a job that stops after 4 trials
        leaves no waiting portfolio trials in its study, and a resumed job goes on where the
        portfolio stood (the k-th trial of the study is the k-th member).
        """
        if self.warm_start and not self._portfolio_done:
            started = storage_of(study).get_n_trials(study_id(study))
            if started < len(self.portfolio):
                study.enqueue_trial(self.space.admits(self.portfolio[started]), skip_if_exists=True)
            else:
                self._portfolio_done = True
        return study.ask()

    def report(self, study: optuna.Study, trial: optuna.Trial, epoch: int, value: float,
               last: bool = False) -> bool:
        """Record an epoch's value; whether the trial is to be pruned (never after its last
        epoch: nothing is left to save). A redone epoch (a retried trial) keeps its first value.

        Optuna refuses `report` and `should_prune` in a multi-objective study; its storage takes
        the epoch's value for any trial (where the dashboard draws the curve from), and the
        Pareto pruner judges the trial from it."""
        if not self.front_costs:
            trial.report(value, epoch)
            return not last and trial.should_prune()
        storage = storage_of(study)
        number = trial_id(trial)
        if epoch not in storage.get_trial(number).intermediate_values:
            storage.set_trial_intermediate_value(number, epoch, value)
        return not last and study.pruner.prune(study, storage.get_trial(number))

    def final_values(self, intermediate: dict[int, float], costs: dict[str, float]
                     ) -> float | list[float] | None:
        """What a finished trial is told: its best epoch's value, and on a Pareto front its costs
        after it (in the front's order); None if it has neither."""
        value = best_value(intermediate.values(), self.maximize)
        if value is None:
            return None
        if not self.front_costs:
            return value
        if any(costs.get(name) is None for name in self.front_costs):
            return None
        return [value, *(float(costs[name]) for name in self.front_costs)]
