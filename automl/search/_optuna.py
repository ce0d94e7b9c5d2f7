"""The fast Optuna parts, and every private Optuna name the control plane uses.

Optuna is pinned to its tested minor (pyproject.toml); the private names these classes build on
(and that the rest of `automl` reaches only through the helpers below) are listed in
`PRIVATE_NAMES`, which tests/search/test_optuna_private_names.py checks against the installed
Optuna: a rename or a changed signature fails there, naming the symbol, not somewhere inside a
job. The only other module that may touch Optuna's private names is storage/optuna_storage.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Container
from typing import Any

import optuna
from optuna.pruners._successive_halving import _completed_rung_key, _get_current_rung
from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace, _SearchSpaceGroup
from optuna.trial import TrialState

from storage.optuna_storage import rank_among

# Every private Optuna name used here: a callable's dotted path -> its parameters, or a class's
# dotted path -> the attributes its instances must have. tests/search/test_optuna_private_names.py
# checks each against the installed Optuna.
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "optuna.pruners._successive_halving._completed_rung_key": ("rung",),
    "optuna.pruners._successive_halving._get_current_rung": ("trial",),
    "optuna.search_space.group_decomposed._GroupDecomposedSearchSpace.__init__":
        ("self", "include_pruned"),
    "optuna.search_space.group_decomposed._GroupDecomposedSearchSpace.calculate":
        ("self", "study", "use_cache"),
    "optuna.search_space.group_decomposed._SearchSpaceGroup.add_distributions":
        ("self", "distributions"),
    "optuna.pruners.HyperbandPruner._get_bracket_id": ("self", "study", "trial"),
    "optuna.pruners.HyperbandPruner._create_bracket_study": ("self", "study", "bracket_id"),
    "optuna.study.Study._get_trials": ("self", "deepcopy", "states", "use_cache"),
}
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "optuna.pruners.SuccessiveHalvingPruner":
        ("_min_resource", "_reduction_factor", "_min_early_stopping_rate", "_bootstrap_count"),
    "optuna.pruners.HyperbandPruner": ("_pruners",),
    "optuna.samplers.TPESampler": ("_group_decomposed_search_space",),
    "optuna.search_space.group_decomposed._GroupDecomposedSearchSpace": ("_study_id", "_search_space"),
    "optuna.study.Study": ("_storage", "_study_id"),
    "optuna.trial.Trial": ("_trial_id",),
    "optuna.trial.FrozenTrial": ("_trial_id",),
}


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (its number is only unique within the study)."""
    return int(trial._trial_id)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def with_groups_once(sampler: optuna.samplers.TPESampler) -> optuna.samplers.TPESampler:
    """TPE's `group` decomposition, fed each finished trial once (`_GroupsOnce`)."""
    sampler._group_decomposed_search_space = _GroupsOnce()
    return sampler


class FastSuccessiveHalvingPruner(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's SuccessiveHalvingPruner reading only the rung values it compares; same decisions.

    At each rung Optuna's pruner lists the whole study (`study.get_trials()`) to collect the
    other trials' `completed_rung_k` values. Behind the trial cache that re-reads every running
    trial in full, a cost per call that grows with the trials running, whatever the study size
    (`automl-bench storage`; docs/benchmarks.md). Here one query counts the rung's values and
    those that beat this trial's. Storages that are not relational (in-memory, in the replay)
    take Optuna's own path.
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
    number) on every read, a pass over all trials, in each `should_prune` that reaches a rung
    and in each sampling step: a cost that grows with the study. Here a trial's bracket, fixed
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
    trial of the study on every ask: a pass over the study per ask, growing with it. Adding a
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
