"""One ranking of trials for every part of a job, on real Optuna trials."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from automl.search import keys
from automl.search.ranking import (
    best_by,
    best_value,
    direction,
    front_member,
    maximizes,
    ranked_complete,
    sorted_front,
)
from automl.service.views import FrontMember
from workers.config import OBJECTIVES


def test_only_the_loss_is_minimized() -> None:
    assert [m for m in OBJECTIVES if not maximizes(m)] == ["val_loss"]
    assert direction("val_loss") == "minimize" and direction("val_accuracy") == "maximize"


@pytest.mark.parametrize("maximize", [True, False])
def test_complete_trials_rank_by_their_first_value_equals_in_order(maximize: bool) -> None:
    study = optuna.create_study(directions=["maximize" if maximize else "minimize", "minimize"])
    for values in ([0.5, 3.0], [0.9, 9.0], [0.5, 1.0], [0.1, 2.0]):
        study.add_trial(create_trial(values=values))
    ranked = ranked_complete(study.get_trials(states=(TrialState.COMPLETE,)), maximize)
    expected = [1, 0, 2, 3] if maximize else [3, 0, 2, 1]
    assert [t.number for t in ranked] == expected
    assert best_by(ranked, lambda t: t.values[0], maximize) is ranked[0]


def test_nan_epochs_are_never_best() -> None:
    assert best_value([math.nan, 0.3, 0.7], maximize=True) == 0.7
    assert best_value([math.nan, 0.3, 0.7], maximize=False) == 0.3
    assert best_value([math.nan], maximize=True) is None
    assert best_by([], float, maximize=True) is None


def test_a_front_member_is_what_the_pareto_view_shows() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for accuracy, latency in ((0.9, 5.0), (0.8, 1.0), (0.7, 9.0)):
        study.add_trial(create_trial(
            values=[accuracy, latency], params={"backbone": "resnet18"},
            distributions={"backbone": CategoricalDistribution(["resnet18"])},
            user_attrs={keys.CONFIG: {"backbone": "resnet18", "img_size": 64},
                        keys.COSTS: {"latency_ms": latency}}))
    front = sorted_front(study.best_trials, maximize=True)
    assert [t.number for t in front] == [0, 1]
    member = front_member(front[0], {"test_accuracy": 0.88})
    assert member == {"trial": 0, "values": [0.9, 5.0], "costs": {"latency_ms": 5.0},
                      "backbone": "resnet18", "img_size": 64,
                      "test_metrics": {"test_accuracy": 0.88}}
    assert FrontMember(metric=member["values"][0], **{k: v for k, v in member.items()
                                                      if k != "values"})
