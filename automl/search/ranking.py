"""Which trial is best: the direction a metric is optimized in, complete trials ranked by it,
a Pareto front in that order, and a front member as a job stores it.

One ranking for every part of a job (checkpoint retention, the published model, progress, the
live view, the front a user pulls from), so none of them can disagree on which trial won.
On a Pareto front a trial is ranked by its first value, the validation metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from automl.search import keys

if TYPE_CHECKING:  # the live view ranks its rows with this module: no Optuna import for it
    from optuna.trial import FrozenTrial

T = TypeVar("T")
MINIMIZED = frozenset({"val_loss"})  # every other validation metric is maximized


def maximizes(metric: str) -> bool:
    """Whether a higher `metric` is better."""
    return metric not in MINIMIZED


def direction(metric: str) -> Literal["maximize", "minimize"]:
    return "maximize" if maximizes(metric) else "minimize"


def ranked_by(items: Iterable[T], value: Callable[[T], float], maximize: bool) -> list[T]:
    """`items`, best first; equals keep their order."""
    return sorted(items, key=value, reverse=maximize)


def best_by(items: Iterable[T], value: Callable[[T], float], maximize: bool) -> T | None:
    """The first of the best of `items`; None when there are none."""
    ranked = ranked_by(items, value, maximize)
    return ranked[0] if ranked else None


def best_value(values: Iterable[float], maximize: bool) -> float | None:
    """The best of the finite `values` (a trial's epochs); None when none is."""
    return best_by((v for v in values if not math.isnan(v)), float, maximize)


def ranked_complete(complete: Iterable[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """Complete trials (as the storage lists them by state) that hold values, best first (on a
    Pareto front: by the first value)."""
    return ranked_by((t for t in complete if t.values), _first_value, maximize)


def fits(trial: FrozenTrial, limits: dict[str, float]) -> bool:
    """Whether a trial's measured costs (`keys.COSTS`) meet every limit; unmeasured: no."""
    costs = trial.user_attrs.get(keys.COSTS) or {}
    return all(isinstance(costs.get(name), int | float) and costs[name] <= limit
               for name, limit in limits.items())


def best_fitting(complete: Iterable[FrozenTrial], limits: dict[str, float],
                 maximize: bool) -> FrozenTrial | None:
    """The best complete trial whose costs meet `limits` (a distill stage's student alone)."""
    return next((t for t in ranked_complete(complete, maximize) if fits(t, limits)), None)


def sorted_front(members: Iterable[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """A Pareto front's members (`study.best_trials`), best validation metric first."""
    return ranked_by(members, _first_value, maximize)


def front_member(trial: FrozenTrial, test_metrics: dict[str, Any]) -> dict[str, Any]:
    """A front member as the job stores it (`keys.FRONT`) and `automl pareto` shows it."""
    config = trial.user_attrs.get(keys.CONFIG, {})
    return {"trial": trial.number, "values": list(trial.values),
            "costs": trial.user_attrs.get(keys.COSTS, {}),
            "backbone": config.get("backbone"), "img_size": config.get("img_size"),
            "test_metrics": test_metrics}


def _first_value(trial: FrozenTrial) -> float:
    return float(trial.values[0])
