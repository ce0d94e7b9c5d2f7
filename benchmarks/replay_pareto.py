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

import heapq
import itertools
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from automl.search import keys
from automl.search.pareto import hypervolume_2d
from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from benchmarks import backbone_costs
from benchmarks.replay import MAX_EPOCHS, Pool, held_out_portfolio, in_processes, load_pools

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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "replay-front")
    events: list[tuple[float, int, optuna.Trial, Any, int]] = []
    order = itertools.count()
    points: list[Point] = []

    def start(now: float) -> None:
        trial = strategy.ask(study)
        run = pool.nearest(strategy.suggest(trial))
        trial.set_user_attr(keys.COSTS, {"latency_ms": latency[run.config["backbone"]]})
        heapq.heappush(events, (now + run.cost[0], next(order), trial, run, 1))

    for _ in range(workers):
        start(0.0)
    while events:
        now, _, trial, run, epoch = heapq.heappop(events)
        if now > horizon:
            break
        value = run.curve[epoch - 1]
        lat = latency[run.config["backbone"]]
        points.append((now, value, lat))
        last = min(len(run.curve), MAX_EPOCHS)
        pruned = strategy.report(study, trial, epoch, value, last=epoch == last)
        if epoch == last:
            seen = dict(enumerate(run.curve[:last], start=1))
            study.tell(trial, strategy.final_values(seen, {"latency_ms": lat}))
        elif pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            heapq.heappush(events, (now + run.cost[epoch], next(order), trial, run, epoch + 1))
            continue
        start(now)
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
