"""Pareto fronts and successive halving by Pareto rank (MO-ASHA), on Optuna studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from automl.search.pareto import (
    ParetoSuccessiveHalvingPruner,
    dominates,
    hypervolume_2d,
    nondominated_ranks,
    pareto_order,
)


def test_points_are_ranked_by_the_fronts_they_lie_on() -> None:
    points = [(1.0, 5.0), (2.0, 2.0), (5.0, 1.0), (3.0, 3.0), (6.0, 6.0)]
    assert nondominated_ranks(points) == [0, 0, 0, 1, 2]
    assert pareto_order(points)[-2:] == [3, 4]


def test_the_hypervolume_is_the_area_a_front_dominates() -> None:
    assert hypervolume_2d([(1.0, 3.0), (2.0, 1.0)], (4.0, 4.0)) == pytest.approx(3 * 1 + 2 * 2)
    assert hypervolume_2d([(5.0, 5.0)], (4.0, 4.0)) == 0.0  # beyond the reference: nothing


def mo_study(pruner: ParetoSuccessiveHalvingPruner) -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"], pruner=pruner)


def reach_rung(study: optuna.Study, accuracy: float, latency: float, epochs: int) -> bool:
    """A running trial with its costs, having reported `epochs` epochs; whether it is pruned."""
    trial = study.ask()
    trial.set_user_attr("costs", {"latency_ms": latency})
    for epoch in range(1, epochs + 1):
        study._storage.set_trial_intermediate_value(trial._trial_id, epoch, accuracy)
    frozen = study._storage.get_trial(trial._trial_id)
    return study.pruner.prune(study, frozen)


def test_a_trial_dominated_at_its_rung_is_pruned_and_the_front_goes_on() -> None:
    """Successive halving by Pareto rank: a trial both slower and less accurate than the others
    at its rung is cut; one that is faster though less accurate is on the front, and goes on."""
    pruner = ParetoSuccessiveHalvingPruner(["latency_ms"], maximize=True, min_resource=1,
                                           reduction_factor=2)
    study = mo_study(pruner)
    assert not reach_rung(study, 0.90, 10.0, 1)  # alone at the rung: promoted
    assert not reach_rung(study, 0.60, 2.0, 1)  # less accurate but faster: on the front
    assert reach_rung(study, 0.50, 12.0, 1)  # dominated by both
    assert not reach_rung(study, 0.95, 1.0, 1)  # dominates everything


def test_a_trial_without_costs_or_before_its_rung_is_not_judged() -> None:
    pruner = ParetoSuccessiveHalvingPruner(["latency_ms"], min_resource=2, reduction_factor=2)
    study = mo_study(pruner)
    trial = study.ask()
    study._storage.set_trial_intermediate_value(trial._trial_id, 1, 0.1)
    assert not pruner.prune(study, study._storage.get_trial(trial._trial_id))
    assert {t.state for t in study.trials} == {TrialState.RUNNING}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="reduction_factor"):
        ParetoSuccessiveHalvingPruner(["latency_ms"], reduction_factor=1)


def test_the_two_objective_sweep_ranks_as_the_definition_does() -> None:
    import random

    rng = random.Random(1)
    for n in (1, 2, 5, 30, 200):
        for _ in range(20):  # small integer grids: many ties and duplicates
            points = [(float(rng.randint(0, 6)), float(rng.randint(0, 6))) for _ in range(n)]
            ranks, left, rank = [0] * n, set(range(n)), 0
            while left:  # peel the fronts off, straight from the definition of dominance
                front = {i for i in left
                         if not any(dominates(points[j], points[i]) for j in left if j != i)}
                for i in front:
                    ranks[i] = rank
                left, rank = left - front, rank + 1
            assert nondominated_ranks(points) == ranks
