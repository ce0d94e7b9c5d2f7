"""Pareto fronts of accuracy against latency, replayed over the recorded fine-tuning runs.

The same simulated clock as `benchmarks/replay.py`, for a job with
`objective: {metrics: [val_accuracy, latency_ms]}`: each recorded run's latency is its backbone's
on the job's default target, from `backbone_costs.json` (measured by the code jobs use). Every
finished epoch is a point (its checkpoint could be kept); the score at a budget is the
hypervolume of the points seen by then, as a share of the hypervolume of every run in the
dataset's pool (1.0: the whole front found). Accuracy is normalized as the regret is (0 at the
pool's worst best run, 1 at its best); latency on a log scale between the pool's fastest and
slowest backbone, since the backbones span three orders of magnitude.

Arms: multi-objective random sampling, NSGA-II without pruning, MO-ASHA with random sampling
(successive halving promoting by Pareto rank, grace period 1, reduction factor 3), and what a
Pareto job with no strategy gets (`default`), its portfolio derived without the held-out dataset.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.search.pareto import hypervolume_2d
from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from benchmarks import backbone_costs
from benchmarks.replay import (
    MAX_EPOCHS,
    Pool,
    Run,
    drive,
    held_out_portfolio,
    in_processes,
    load_pools,
)

STRATEGIES = ("mo-random", "nsga2", "mo-asha", "default")
FRONT = ("latency_ms",)
REFERENCE = (1.0, 1.1)  # in normalized (1 - accuracy, log latency): just past the worst corner

Point = tuple[float, float, float]  # (time, accuracy, latency_ms)


def make_strategy(name: str, seed: int, portfolio: tuple[dict[str, Any], ...]) -> Strategy:
    space = SearchSpace(max_epochs=MAX_EPOCHS)
    if name == "mo-random":
        return Strategy(space, sampler="random", pruner="none", seed=seed, warm_start=False,
                        front_costs=FRONT)
    if name == "nsga2":
        return Strategy(space, sampler="nsga2", pruner="none", seed=seed, warm_start=False,
                        front_costs=FRONT)
    if name == "mo-asha":  # Syne Tune's MOASHA defaults
        return Strategy(space, sampler="random", pruner="sha", seed=seed, warm_start=False,
                        front_costs=FRONT, pruner_options={"min_resource": 1, "reduction_factor": 3})
    return Strategy(space, seed=seed, portfolio=portfolio, front_costs=FRONT)


def simulate(strategy: Strategy, pool: Pool, latency: dict[str, float], workers: int,
             horizon: float) -> list[Point]:
    """Drive `strategy` over `pool` on a simulated clock; every finished epoch's point."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    points: list[Point] = []

    def seen(now: float, run: Run, value: float) -> bool:
        points.append((now, value, latency[run.config["backbone"]]))
        return False

    drive(strategy, pool, workers, horizon, seen,
          costs=lambda run: {"latency_ms": latency[run.config["backbone"]]})
    return points


@dataclass(frozen=True)
class Scale:
    """A pool's normalization: accuracy as regret is, latency on a log scale."""

    best: float
    worst: float
    fastest: float
    slowest: float

    @classmethod
    def of(cls, pool: Pool, latency: dict[str, float]) -> Scale:
        lats = [latency[r.config["backbone"]] for r in pool.runs]
        return cls(pool.best, pool.worst, min(lats), max(lats))

    def point(self, accuracy: float, lat: float) -> tuple[float, float]:
        span = math.log(self.slowest / self.fastest) or 1.0
        return (1 - (accuracy - self.worst) / (self.best - self.worst),
                math.log(lat / self.fastest) / span)

    def hypervolume(self, points: Sequence[tuple[float, float]]) -> float:
        return hypervolume_2d([self.point(a, lat) for a, lat in points], REFERENCE)


def shares(points: Sequence[Point], pool: Pool, latency: dict[str, float],
           budgets: Sequence[float]) -> list[float]:
    """The hypervolume seen by each budget, as a share of the whole pool's."""
    scale = Scale.of(pool, latency)
    whole = scale.hypervolume([(max(r.curve[:MAX_EPOCHS]), latency[r.config["backbone"]])
                               for r in pool.runs])
    return [scale.hypervolume([(a, lat) for t, a, lat in points if t <= budget]) / whole
            for budget in budgets]


@dataclass(frozen=True)
class Cell:
    dataset: str
    strategy: str
    seed: int
    shares: tuple[float, ...]


def _one(args: tuple[Path, Path, str, str, int, int, tuple[float, ...]]) -> Cell:
    data, table, dataset, name, seed, workers, budgets = args
    pools = load_pools(data)
    latency = {b: row["latency_ms"] for b, row in backbone_costs.load(table).items()}
    held_out = pools[dataset]
    portfolio = held_out_portfolio(pools, dataset) if name == "default" else ()
    points = simulate(make_strategy(name, seed, portfolio), held_out, latency, workers,
                      max(budgets))
    return Cell(dataset, name, seed, tuple(shares(points, held_out, latency, budgets)))


def run(
    data: Path,
    table: Path = backbone_costs.TABLE,
    workers: int = 4,
    seeds: int = 3,
    budgets: Sequence[float] = (3600, 14400, 57600),
    strategies: Sequence[str] = STRATEGIES,
    datasets: Sequence[str] | None = None,
    processes: int | None = None,
    progress: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    names = datasets or list(load_pools(data))
    jobs = [(data, table, d, s, seed, workers, tuple(budgets))
            for d in names for s in strategies for seed in range(seeds)]
    return in_processes(_one, jobs, processes, progress)


def mean_share(cells: Sequence[Cell], strategy: str, budget_index: int) -> float:
    return statistics.fmean(c.shares[budget_index] for c in cells if c.strategy == strategy)
