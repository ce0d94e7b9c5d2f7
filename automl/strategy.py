"""The search strategy: sampler, pruner, space and warm start, as one object.

Ray Tune jobs (through the bridge) and the replay benchmark drive the very same object, so what
the benchmark measures is what jobs run. It knows nothing of Ray: it makes and loads the study,
and turns an Optuna trial into a trial configuration.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner
from optuna.pruners._successive_halving import _completed_rung_key, _get_current_rung
from optuna.samplers import BaseSampler
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.trial import TrialState

from automl.portfolio import PORTFOLIOS
from automl.space import SearchSpace
from storage.optuna_storage import rank_among

# What a job gets when its spec names no strategy, chosen by the replay benchmark (README,
# Benchmarks): over 2,443 recorded fine-tuning runs on 13 datasets, the portfolio for the
# dataset's size (derived from the other datasets) followed by random sampling with successive
# halving from epoch 2 reached mean regret 0.117/0.044/0.011 at 1/4/16 h with 4 workers, against
# 0.175/0.065/0.025 for Ray Tune's usual ASHA; TPE after the same portfolio and Hyperband did
# worse. TPE stays one setting away.
DEFAULT_SAMPLER = "random"
DEFAULT_PRUNER = "sha"


def portfolio_size(n_images: int) -> int:
    """The shipped portfolio's dataset size nearest to `n_images` (on a log scale)."""
    return min(PORTFOLIOS, key=lambda size: abs(math.log(size) - math.log(max(n_images, 1))))


def portfolio_for(n_images: int) -> tuple[dict[str, Any], ...]:
    """The warm-start portfolio for a dataset of `n_images`: what pays off first differs between
    a 1,000-image dataset, where a big model's whole run fits in an hour, and an 80,000-image
    one, where an hour is a few epochs of a small one (README, Benchmarks)."""
    return PORTFOLIOS[portfolio_size(n_images)]


class FastSuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's SuccessiveHalvingPruner reading only the rung values it compares; same decisions.

    At each rung Optuna's pruner lists the whole study (`study.get_trials()`) to collect the
    other trials' `completed_rung_k` values. Behind the trial cache that re-reads every running
    trial in full: ~60 ms of CPU per call with 32 trials running, whatever the study size
    (`automl bench storage`). Here one query counts the rung's values and those that beat this
    trial's. Storages that are not relational (in-memory, in the replay) take Optuna's own path.
    tests/search/test_strategy.py checks the decisions match Optuna's trial for trial.
    """

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or self._min_resource is None:
            return super().prune(study, trial)  # min_resource="auto" needs the finished trials
        rung = _get_current_rung(trial)
        value = trial.intermediate_values[step]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        while step >= self._min_resource * self._reduction_factor ** (
            self._min_early_stopping_rate + rung
        ):
            if math.isnan(value):
                return True
            key = _completed_rung_key(rung)
            ranked = rank_among(study._storage, study._study_id, key, value, maximize, trial._trial_id)
            if ranked is None:
                return super().prune(study, trial)
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
            others, better = ranked
            if others + 1 <= self._bootstrap_count:
                return True
            # Optuna promotes the top 1/reduction_factor of the rung (at least one): the value
            # must be no worse than the k-th best, i.e. fewer than k others may beat it
            if better > max((others + 1) // self._reduction_factor - 1, 0):
                return True
            rung += 1
        return False


class FastHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's HyperbandPruner with a cheaper per-bracket view of the study; same decisions.

    Hyperband hands its successive-halving pruners, and the sampler, a view of the study that
    lists only one bracket's trials. Optuna's view (`_BracketStudy` in
    optuna/pruners/_hyperband.py) derives every trial's bracket (a CRC32 of study name and trial
    number) on every read, a pass over all trials: at 10,000 trials, tens of ms in each
    `should_prune` that reaches a rung, and in each sampling step. Here a trial's bracket, fixed
    once the brackets are set up, is computed once. The view keeps Optuna's whitelist: the
    pruner and the sampler may read the bracket's trials, the directions and the storage, and
    nothing else (no `optimize`, `ask`, `tell`, attributes...), which would act on the real
    study. tests/search/test_strategy.py checks that samples and decisions match Optuna's own
    sampler and pruner trial for trial (`benchmarks/storage_load.py` measures).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._brackets: dict[str, dict[int, int]] = {}  # study name -> trial number -> bracket

    def _get_bracket_id(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> int:
        if not self._pruners:  # not set up yet: Optuna puts every trial in bracket 0 for now
            return super()._get_bracket_id(study, trial)
        known = self._brackets.setdefault(study.study_name, {})
        bracket = known.get(trial.number)
        if bracket is None:
            bracket = known[trial.number] = super()._get_bracket_id(study, trial)
        return bracket

    def _create_bracket_study(self, study: optuna.Study, bracket_id: int) -> optuna.Study:
        return _BracketStudy(study, self, bracket_id)


class _BracketStudy(optuna.Study):
    """The trials of one Hyperband bracket, for the pruner and the sampler (see above).

    Any attribute outside `_VALID_ATTRS`, Optuna's own list, raises AttributeError as Optuna's
    view does: the view shares the real study's storage, so `optimize` on it would run trials
    on the real study, endlessly (it never stops on its own), and `tell` or `set_user_attr`
    would write to it.
    """

    _VALID_ATTRS = frozenset((
        "get_trials", "_get_trials", "directions", "direction", "_directions", "_storage",
        "_study_id", "pruner", "study_name", "_bracket_id", "sampler", "trials",
        "_is_multi_objective", "stop", "_study", "_thread_local",
    ))

    def __init__(self, study: optuna.Study, pruner: FastHyperbandPruner, bracket_id: int) -> None:
        super().__init__(
            study_name=study.study_name, storage=study._storage, sampler=study.sampler,
            pruner=pruner,
        )
        self._study, self._bracket_id = study, bracket_id

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[optuna.trial.FrozenTrial]:
        trials = super()._get_trials(deepcopy=deepcopy, states=states)
        hyperband, bracket_id = self.pruner, self._bracket_id
        assert isinstance(hyperband, FastHyperbandPruner)
        if not hyperband._pruners:
            return [t for t in trials if hyperband._get_bracket_id(self, t) == bracket_id]
        known = hyperband._brackets.setdefault(self.study_name, {})
        chosen = []
        for t in trials:
            bracket = known.get(t.number)
            if bracket is None:
                bracket = hyperband._get_bracket_id(self, t)
            if bracket == bracket_id:
                chosen.append(t)
        return chosen

    def stop(self) -> None:
        # the optimization loop that runs is the real study's
        self._study.stop()

    def __getattribute__(self, name: str) -> Any:
        if name not in _BracketStudy._VALID_ATTRS:
            raise AttributeError(f"_BracketStudy does not have attribute of '{name}'")
        return object.__getattribute__(self, name)


class _GroupsOnce(_GroupDecomposedSearchSpace):
    """TPE's `group` decomposition of the search space, fed each finished trial once.

    Optuna's `_GroupDecomposedSearchSpace.calculate` re-adds the distributions of every finished
    trial of the study on every ask (~20-40 us a trial: 0.2-0.4 s an ask at 10,000 trials). Adding a
    trial's distributions again never changes the groups, nor their order, and a finished trial's
    distributions never change, so adding each trial once gives the very same groups.
    """

    def __init__(self) -> None:
        super().__init__(include_pruned=True)
        self._added: set[int] = set()

    def calculate(self, study: optuna.Study, use_cache: bool = False) -> _SearchSpaceGroup:
        if self._study_id is None:
            self._study_id = study._study_id
        elif self._study_id != study._study_id:
            raise ValueError("`_GroupDecomposedSearchSpace` cannot handle multiple studies.")
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        for trial in study._get_trials(deepcopy=False, states=states, use_cache=use_cache):
            if trial._trial_id not in self._added:
                self._added.add(trial._trial_id)
                self._search_space.add_distributions(trial.distributions)
        return copy.deepcopy(self._search_space)


@dataclass
class Strategy:
    space: SearchSpace
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: str = DEFAULT_SAMPLER
    pruner: str = DEFAULT_PRUNER
    seed: int | None = None
    warm_start: bool = True
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    portfolio: tuple[dict[str, Any], ...] = ()
    _portfolio_done: bool = field(default=False, init=False, repr=False)

    @property
    def max_epochs(self) -> int:
        return self.space.max_epochs

    def make_sampler(self, offset: int = 0) -> BaseSampler:
        """`offset` reseeds a reloaded study so a restarted driver does not replay old draws."""
        seed = None if self.seed is None else self.seed + offset
        options = dict(self.sampler_options)
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, **options)
        if self.sampler == "cmaes":
            options.setdefault("warn_independent_sampling", False)
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        options.setdefault("multivariate", True)
        options.setdefault("group", True)
        options.setdefault("constant_liar", True)
        sampler = optuna.samplers.TPESampler(seed=seed, **options)
        if options["group"]:
            sampler._group_decomposed_search_space = _GroupsOnce()
        return sampler

    def make_pruner(self) -> BasePruner:
        options = dict(self.pruner_options)
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
        return optuna.pruners.NopPruner()

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
                direction=self.direction,
                sampler=self.make_sampler(),
                pruner=self.make_pruner(),
            )
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
            started = study._storage.get_n_trials(study._study_id)
            if started < len(self.portfolio):
                study.enqueue_trial(self.space.admits(self.portfolio[started]), skip_if_exists=True)
            else:
                self._portfolio_done = True
        return study.ask()

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return self.space.sample(trial)

