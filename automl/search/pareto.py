"""Pareto fronts: non-dominated sorting, the 2-D hypervolume, and successive halving that
promotes by Pareto rank (MO-ASHA, Schmucker et al. 2021).

Optuna refuses `Trial.report` and `Trial.should_prune` in multi-objective studies, so no Optuna
pruner can stop a trial of a Pareto-front job early, and Ray Tune's OptunaSearch prunes nothing
at all. This pruner is for those studies: at each rung (after epoch min_resource x eta^k) a
trial goes on when it is among the best 1/eta of the trials that reached the rung, ordered by
the non-dominated rank of (its metric at the rung, its costs), and within a rank by crowding
distance (NSGA-II's), so the survivors spread along the front rather than crowd one end. The
metric at each epoch is kept where Optuna's storage allows it for any trial (its intermediate
values, written by the bridge through the storage); the costs are the trial's `costs` user
attribute, known before it trained.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from automl.search import keys
from automl.search._optuna import storage_of, trial_id

Point = tuple[float, ...]  # every coordinate minimized


def dominates(a: Point, b: Point) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """0 for the points no other point dominates, 1 for those only rank-0 points dominate...

    The pruner ranks every trial that reached a rung at each report, so two coordinates (a
    metric and one cost, the usual front) take the O(n log n) sweep; more take the plain sort.
    """
    if points and len(points[0]) == 2:
        return _ranks_2d(points)
    ranks = [0] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def _ranks_2d(points: Sequence[Point]) -> list[int]:
    """Sweep by the first coordinate: a point joins the first front whose lowest second
    coordinate so far is above its own (that front holds nothing dominating it)."""
    lowest: list[float] = []  # per front, the second coordinate of its last point: increasing
    rank_of: dict[Point, int] = {}
    for point in sorted(set(points)):
        rank = bisect.bisect_right(lowest, point[1])
        if rank == len(lowest):
            lowest.append(point[1])
        else:
            lowest[rank] = point[1]
        rank_of[point] = rank
    return [rank_of[p] for p in points]


def crowding(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance within one front (infinite at each objective's extremes)."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for k in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][k])
        low, high = points[order[0]][k], points[order[-1]][k]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(order, order[1:], order[2:], strict=False):
            distance[here] += (points[after][k] - points[before][k]) / (high - low)
    return distance


def pareto_order(points: Sequence[Point]) -> list[int]:
    """Indices best first: by non-dominated rank, then by crowding distance (larger first)."""
    ranks = nondominated_ranks(points)
    fronts: dict[int, list[int]] = {}
    for i, rank in enumerate(ranks):
        fronts.setdefault(rank, []).append(i)
    spread: dict[int, float] = {}
    for members in fronts.values():
        for i, d in zip(members, crowding([points[i] for i in members]), strict=True):
            spread[i] = d
    return sorted(range(len(points)), key=lambda i: (ranks[i], -spread[i]))


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area the points dominate up to `reference`, both coordinates minimized."""
    front = sorted({p for p in points if p[0] < reference[0] and p[1] < reference[1]})
    area, best_second = 0.0, reference[1]
    for first, second in front:
        if second < best_second:
            area += (reference[0] - first) * (best_second - second)
            best_second = second
    return area


def as_point(metric: float, maximize: bool, costs: Sequence[float]) -> Point:
    return (-metric if maximize else metric, *costs)


class ParetoSuccessiveHalvingPruner(BasePruner):
    """Asynchronous successive halving over (metric, costs), promoting by Pareto order."""

    def __init__(self, costs: Sequence[str], maximize: bool = True, min_resource: int = 2,
                 reduction_factor: int = 3) -> None:
        if min_resource < 1 or reduction_factor < 2:
            raise ValueError("min_resource must be >= 1 and reduction_factor >= 2")
        self.costs, self.maximize = tuple(costs), maximize
        self.min_resource, self.reduction_factor = min_resource, reduction_factor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        own = trial_costs(trial, self.costs)
        if own is None:  # not measured: nothing to rank it by
            return False
        storage = storage_of(study)
        rung = sum(1 for key in trial.system_attrs if key.startswith(keys.RUNG_KEY.format("")))
        value = trial.intermediate_values[step]
        while step >= self.min_resource * self.reduction_factor ** rung:
            if math.isnan(value):
                return True
            key = keys.RUNG_KEY.format(rung)
            storage.set_trial_system_attr(trial_id(trial), key, value)
            others = [(t.system_attrs[key], trial_costs(t, self.costs)) for t in study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED))
                if t.number != trial.number and key in t.system_attrs]
            points = [as_point(value, self.maximize, own)] + [
                as_point(v, self.maximize, c) for v, c in others if c is not None]
            keep = max(1, len(points) // self.reduction_factor)
            if 0 not in pareto_order(points)[:keep]:
                return True
            rung += 1
        return False


def trial_costs(trial: FrozenTrial, names: Sequence[str]) -> tuple[float, ...] | None:
    costs = trial.user_attrs.get(keys.COSTS) or {}
    values = [costs.get(name) for name in names]
    if any(v is None for v in values):
        return None
    return tuple(float(v) for v in values)  # type: ignore[arg-type]
