"""The strategy's TPE, Hyperband and SHA are Optuna's, made cheaper: the same samples and decisions."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import optuna
import pytest

from automl.search._optuna import FastHyperbandPruner, FastSuccessiveHalvingPruner
from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from storage.optuna_storage import optuna_storage

EPOCHS = 9  # three brackets at reduction factor 3: rungs end at epochs 1, 3 and 9
SEED = 7


def _search(
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    trials: int = 40,
    storage: optuna.storages.BaseStorage | None = None,
) -> list[tuple[Any, ...]]:
    """A seeded search through ask / report / should_prune / tell; what it sampled and pruned."""
    strategy = Strategy(SearchSpace(max_epochs=EPOCHS))
    study = optuna.create_study(
        study_name="same-name", direction="maximize", sampler=sampler, pruner=pruner,
        storage=storage,
    )
    rng = random.Random(0)
    decided = []
    for _ in range(trials):
        trial = study.ask()
        config = strategy.space.sample(trial)
        ceiling, speed = rng.uniform(0.4, 0.95), rng.uniform(0.3, 1.5)
        pruned_at = None
        for epoch in range(1, EPOCHS + 1):
            trial.report(ceiling * (1 - math.exp(-speed * epoch)), epoch)
            if epoch < EPOCHS and trial.should_prune():
                pruned_at = epoch
                break
        if pruned_at is None:
            study.tell(trial, max(trial._cached_frozen_trial.intermediate_values.values()))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        decided.append((trial.number, sorted(config.items()), pruned_at))
    return decided


def test_sampler_and_pruner_decide_as_optunas_own() -> None:
    strategy = Strategy(SearchSpace(max_epochs=EPOCHS), sampler="tpe", pruner="hyperband", seed=SEED)
    pruner = strategy.make_pruner()
    assert isinstance(pruner, FastHyperbandPruner)

    decided = _search(strategy.make_sampler(), pruner)

    optunas = _search(
        optuna.samplers.TPESampler(seed=SEED, multivariate=True, group=True, constant_liar=True),
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS, reduction_factor=3),
    )
    assert decided == optunas
    assert {1, 3, None} <= {epoch for _, _, epoch in decided}  # both rungs pruned, some ran out


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_successive_halving_on_the_database_decides_as_optunas_own(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL counts the rung's better values in SQL, SQLite in Python; both as Optuna."""
    strategy = Strategy(SearchSpace(max_epochs=EPOCHS), sampler="random", pruner="sha", seed=SEED)
    pruner = strategy.make_pruner()
    assert isinstance(pruner, FastSuccessiveHalvingPruner)
    url = (
        request.getfixturevalue("pg_url") if database == "postgresql"
        else f"sqlite:///{tmp_path / 'study.db'}"
    )
    storage = optuna_storage(url)

    decided = _search(strategy.make_sampler(), pruner, storage=storage)

    optunas = _search(
        optuna.samplers.RandomSampler(seed=SEED),
        optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3),
    )
    assert decided == optunas
    assert {2, 6, None} <= {epoch for _, _, epoch in decided}  # pruned at two rungs, some ran out


TEST_BACKBONES = ("test_resnet", "test_convnext", "test_efficientnet")


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2", "gp"])
def test_a_backbone_measured_over_a_limit_is_not_drawn_again(sampler: str) -> None:
    from automl.search import keys
    from automl.search.overrides import Choices

    space = SearchSpace({"backbone": Choices(TEST_BACKBONES)}, max_epochs=2)
    strategy = Strategy(space, sampler=sampler, seed=SEED, warm_start=False,
                        limits={"params_m": 0.25})
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "limits")

    def drawn(n: int) -> list[str]:
        out = []
        for _ in range(n):
            trial = strategy.ask(study)
            out.append(strategy.space.sample(trial)["backbone"])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return out

    assert "test_resnet" in drawn(12)  # nothing measured yet: every backbone is drawn
    study.set_user_attr(keys.MEASURED_COSTS, {
        "test_resnet@default@device=cpu": {"params_m": 0.37, "macs_g": 0.01},
        "test_convnext@default@device=cpu": {"params_m": 0.21, "macs_g": 0.01},
    })
    assert "test_resnet" not in drawn(20)


def test_freeze_thaw_is_the_strategys_policy_and_the_study_prunes_nothing() -> None:
    """`pruner: freeze-thaw`: the bridge asks the strategy's policy (pause, resume), the study's
    own pruner is NopPruner; its options reach PromotionAsha, and other options are refused."""
    import optuna

    from automl.search.curve_model import LearnedFreezeThaw
    from automl.search.freeze_thaw import PromotionAsha
    from automl.search.spec import parse_spec
    from tests.support import DIGITS_JOB

    spec = parse_spec({**DIGITS_JOB, "strategy": {
        "pruner": "freeze-thaw", "pruner_options": {"min_resource": 1, "reduction_factor": 2}}})
    strategy = spec.strategy_object()
    policy = strategy.freeze_thaw()
    assert isinstance(policy, LearnedFreezeThaw)  # the replay's best, by default
    assert (policy.min_resource, policy.reduction_factor, policy.max_epochs) == (1, 2, 3)
    assert isinstance(strategy.make_pruner(), optuna.pruners.NopPruner)
    anchor = parse_spec({**DIGITS_JOB, "strategy": {
        "pruner": "freeze-thaw", "pruner_options": {"learned": False}}}).strategy_object()
    assert type(anchor.freeze_thaw()) is PromotionAsha
    assert parse_spec(DIGITS_JOB).strategy_object().freeze_thaw() is None
    with pytest.raises(ValueError, match="not an option of the freeze-thaw pruner"):
        parse_spec({**DIGITS_JOB, "strategy": {"pruner": "freeze-thaw",
                                               "pruner_options": {"max_epochs": 9}}})
