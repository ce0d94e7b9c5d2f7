"""Search efficiency: replay recorded fine-tuning runs through the project's real strategy.

The data (see `shared/benchmarks/finetune-curves/README.md`) holds, per dataset, a pool of
fine-tuning runs with their per-epoch validation accuracy and seconds. A simulated clock and W
workers stand in for the cluster: each worker asks the strategy's study for a configuration (the
very `Strategy` a job builds: sampler, pruner, space and portfolio), which maps to the nearest
recorded run of that dataset; every epoch costs its recorded seconds, is reported, and the
strategy's pruner may stop it; a run ends where its curve ends. Regret is read off at each budget.

Nothing here knows a dataset's name: the `default` arm's portfolio for a dataset is derived from
the *other* datasets only (leave-one-dataset-out), by the same code that derived the portfolio
jobs ship with (`derive_portfolio`, printed by `automl-bench portfolio`).
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
from optuna.trial import TrialState

from automl.search import keys
from automl.search.portfolio import PORTFOLIOS
from automl.search.space import (
    BATCH_SIZES,
    CUTMIX_ALPHAS,
    DEFAULT_BACKBONES,
    LR_RANGE,
    MIXUP_ALPHAS,
    MIXUP_PROBS,
    WEIGHT_DECAY_RANGE,
    SearchSpace,
)
from automl.search.strategy import FREEZE_THAW, Strategy, portfolio_size
from workers.config import AUGMENTS, OPTIMIZERS, SCHEDULES

C = TypeVar("C")
MAX_EPOCHS = 50  # the recorded curves' longest
CHECKPOINTS = (900, 3600, 14400, 57600)  # seconds of one worker a portfolio is judged at
MIN_SPACING = 4.0  # between portfolio members, in `Pool.nearest`'s distance: a backbone change
STRATEGIES = ("random", "asha", "tpe", "default", "asha-promotion", "hyperband-pause",
              "default-promotion", "freeze-thaw", "freeze-thaw-early")  # the last five pause
# the pausing arms: `strategy.pruner: freeze-thaw` with these options
PAUSING: dict[str, dict[str, Any]] = {
    "asha-promotion": {"learned": False},
    "hyperband-pause": {"brackets": True, "min_resource": 1},
    "default-promotion": {"learned": False},
    "freeze-thaw": {},  # what a job's `pruner: freeze-thaw` gets
    "freeze-thaw-early": {"early": True},  # and a learned pause before the first rung too
}

# Quick-Tune's timm names -> the current timm names of the same weights (our default space)
_BACKBONE = {name.split(".")[0]: name for name in DEFAULT_BACKBONES}
_RECORDED_BACKBONE = {
    "convnext_small_384_in22ft1k": "convnext_small.fb_in22k_ft_in1k_384",
    "deit3_small_patch16_384_in21ft1k": "deit3_small_patch16_384.fb_in22k_ft_in1k",
    "swinv2_base_window12to24_192to384_22kft1k": "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
    "tf_efficientnet_b4_ns": "tf_efficientnet_b4.ns_jft_in1k",
    "tf_efficientnet_b6_ns": "tf_efficientnet_b6.ns_jft_in1k",
    "tf_efficientnet_b7_ns": "tf_efficientnet_b7.ns_jft_in1k",
    "xcit_nano_12_p8_384_dist": "xcit_nano_12_p8_384.fb_dist_in1k",
    "xcit_tiny_12_p8_384_dist": "xcit_tiny_12_p8_384.fb_dist_in1k",
    "xcit_tiny_24_p8_384_dist": "xcit_tiny_24_p8_384.fb_dist_in1k",
    "xcit_small_12_p8_384_dist": "xcit_small_12_p8_384.fb_dist_in1k",
}
_OPTIMIZER = {"adam": "adam", "adamw": "adamw", "adamp": "adamw", "sgd": "sgd", "momentum": "sgd"}
_AUGMENT = {"None": "basic", "auto_augment": "autoaugment", "random_augment": "randaugment",
            "trivial_augment": "trivialaugment"}


@dataclass(frozen=True)
class Run:
    config: dict[str, Any]  # in the project's space vocabulary
    curve: tuple[float, ...]  # validation top-1 after each epoch
    cost: tuple[float, ...]  # seconds of each epoch


@dataclass
class Pool:
    """One dataset's recorded runs: what any suggested configuration can turn into."""

    runs: list[Run]
    features: np.ndarray
    best: float
    worst: float
    n_images: int  # the dataset's size: what a job knows of a new dataset before any trial

    @classmethod
    def of(cls, runs: list[Run], n_images: int) -> Pool:
        bests = [max(r.curve) for r in runs]
        return cls(runs, np.stack([features(r.config) for r in runs]), max(bests), min(bests),
                   n_images)

    def nearest(self, config: dict[str, Any]) -> Run:
        distance = np.abs(self.features - features(config)) @ WEIGHTS
        return self.runs[int(np.argmin(distance))]

    def regret(self, value: float) -> float:
        return (self.best - value) / (self.best - self.worst)


def recorded_config(row: dict[str, str]) -> dict[str, Any]:
    """A recorded run's hyperparameters in the project's vocabulary (values as recorded)."""
    def one_hot(prefix: str) -> str:
        return next(k.split(":", 2)[2] for k, v in row.items() if k.startswith(prefix) and v == "1")

    model = one_hot("cat:model:")
    frozen = float(row["pct_to_freeze"])
    mixing = float(row["mixup_prob"]) > 0
    return {
        "backbone": _RECORDED_BACKBONE.get(model) or _BACKBONE[model],
        "freeze_stages": "all" if row["linear_probing"] == "1" else frozen * 4,  # of 4 stages
        "optimizer": _OPTIMIZER[one_hot("cat:opt:")],
        "lr": float(row["lr"]),
        "weight_decay": max(float(row["weight_decay"]), 1e-6),
        "schedule": one_hot("cat:sched:"),
        "warmup_epochs": min(int(row["warmup_epochs"]), 5),
        "augment": _AUGMENT[one_hot("cat:data_augmentation:")],
        "mixup_alpha": float(row["mixup"]) if mixing else 0.0,
        "cutmix_alpha": float(row["cutmix"]) if mixing else 0.0,
        "mixup_prob": float(row["mixup_prob"]),
        "label_smoothing": float(row["smoothing"]),
        "drop_path_rate": float(row["drop"]),
        "batch_size": int(row["batch_size"]),
    }


def project(config: dict[str, Any]) -> dict[str, Any]:
    """The default space's closest configuration: what a job's portfolio can enqueue."""
    def nearest(value: float, choices: Sequence[float], log: bool = False) -> Any:
        key = (lambda c: abs(math.log2(c) - math.log2(value))) if log else (lambda c: abs(c - value))
        return min(choices, key=key)

    c = dict(config)
    if c["freeze_stages"] != "all":
        c["freeze_stages"] = min(round(c["freeze_stages"]), 3)
    low, high = LR_RANGE[c["optimizer"]]
    c["lr"] = min(max(c["lr"], low), high)
    c["weight_decay"] = min(max(c["weight_decay"], WEIGHT_DECAY_RANGE[0]), WEIGHT_DECAY_RANGE[1])
    c["batch_size"] = nearest(c["batch_size"], BATCH_SIZES, log=True)
    c["mixup_alpha"] = nearest(c["mixup_alpha"], MIXUP_ALPHAS)
    c["cutmix_alpha"] = nearest(c["cutmix_alpha"], CUTMIX_ALPHAS)
    if c["mixup_alpha"] or c["cutmix_alpha"]:
        c["mixup_prob"] = nearest(max(c["mixup_prob"], 0.25), MIXUP_PROBS)
    else:
        c.pop("mixup_prob")
    c["label_smoothing"] = min(c["label_smoothing"], 0.2)
    c["drop_path_rate"] = min(c["drop_path_rate"], 0.2)
    return c


# feature layout: [backbone one-hot..., linear probe, frozen fraction, optimizer one-hot...,
# log10 lr, log10 wd, schedule one-hot..., warmup, augment one-hot..., mixup, cutmix, smoothing,
# drop path, log2 batch]


def features(config: dict[str, Any]) -> np.ndarray:
    frozen = config.get("freeze_stages", 0)
    parts: list[float] = [float(config["backbone"] == b) for b in DEFAULT_BACKBONES]
    parts += [float(frozen == "all"), 1.0 if frozen == "all" else min(float(frozen), 4.0) / 4]
    parts += [float(config.get("optimizer") == o) for o in OPTIMIZERS]
    parts += [math.log10(config.get("lr", 1e-3)), math.log10(max(config.get("weight_decay", 0.0), 1e-6))]
    parts += [float(config.get("schedule") == s) for s in SCHEDULES]
    parts += [config.get("warmup_epochs", 0) / 5]
    parts += [float(config.get("augment") == a) for a in AUGMENTS]
    parts += [min(config.get("mixup_alpha", 0.0), 1.0), min(config.get("cutmix_alpha", 0.0), 1.0),
              config.get("label_smoothing", 0.0) * 5, config.get("drop_path_rate", 0.0) * 2.5,
              math.log2(config.get("batch_size", 32))]
    return np.asarray(parts)


def _weights() -> np.ndarray:
    """What decides the nearest run, most first: backbone, linear probe, lr, freezing, optimizer."""
    w: list[float] = [2.0] * len(DEFAULT_BACKBONES)  # a different backbone: distance 4
    w += [3.0, 1.0]
    w += [0.5] * len(OPTIMIZERS)
    w += [1.5, 0.1]
    w += [0.25] * len(SCHEDULES)
    w += [0.1]
    w += [0.25] * len(AUGMENTS)
    w += [0.1, 0.1, 0.1, 0.1, 0.3]
    return np.asarray(w)


WEIGHTS = _weights()


def load_pools(data: Path) -> dict[str, Pool]:
    perf = json.loads((data / "curves" / "perf.json").read_text())
    cost = json.loads((data / "curves" / "cost.json").read_text())
    with (data / "table.csv").open() as f:
        rows = {row[""]: row for row in csv.DictReader(f)}
    described = data / "meta" / "descriptors.json"
    sizes = json.loads(described.read_text()) if described.exists() else {}
    pools = {}
    for dataset, curves in perf.items():
        if dataset == "info":
            continue
        runs = [Run(recorded_config(rows[rid]), tuple(curve), tuple(cost[dataset][rid]))
                for rid, curve in curves.items() if curve]
        pools[dataset] = Pool.of(runs, int(sizes.get(dataset, [1000])[0]))
    return pools


def derive_portfolio(
    pools: Sequence[Pool],
    size: int = 32,
    n_images: int | None = None,
    checkpoints: Sequence[float] = CHECKPOINTS,
) -> tuple[dict[str, Any], ...]:
    """Greedy portfolio: each member the recorded configuration that most lowers the mean regret
    over `pools` and over time `checkpoints` of one worker, given the members before it
    (Quick-Tune / auto-sklearn 2 style). Anytime regret, so a slow giant that wins after a day
    does not crowd out what wins in the first hour.

    For a dataset of `n_images`, a pool's checkpoints are stretched by sqrt(pool size / n_images):
    an hour on a 5,000-image dataset is judged like 4 hours on an 80,000-image one, so what is
    first on a big dataset is what gets somewhere in its first few epochs. The square root, not
    the ratio, because epochs are not all that grows with a dataset: the best runs grow longer.
    """
    return derive_portfolios(pools, size, (n_images,), checkpoints)[n_images]


def dump_portfolios(portfolios: dict[int | None, tuple[dict[str, Any], ...]], origin: str) -> str:
    """automl/search/portfolios.json: one configuration a line, so a regenerated portfolio
    diffs member by member."""
    blocks = []
    for n_images, configs in portfolios.items():
        members = ",\n".join(f"      {json.dumps(config)}" for config in configs)
        blocks.append(f'    "{n_images}": [\n{members}\n    ]')
    return ('{\n  "generated_by": ' + json.dumps(origin) + ',\n  "portfolios": {\n'
            + ",\n".join(blocks) + "\n  }\n}")


def derive_portfolios(
    pools: Sequence[Pool],
    size: int,
    sizes: Sequence[int | None],
    checkpoints: Sequence[float] = CHECKPOINTS,
) -> dict[int | None, tuple[dict[str, Any], ...]]:
    """`derive_portfolio` for several dataset sizes, mapping each candidate to its runs once."""
    candidates = [project(run.config) for pool in pools for run in pool.runs]
    nearest = [[p.nearest(c) for p in pools] for c in candidates]
    points = np.stack([features(c) for c in candidates])
    out = {}
    for n_images in sizes:
        scores = np.array([
            [r for p, run in zip(pools, runs, strict=True)
             for r in _anytime_regret(p, run, _stretched(checkpoints, p, n_images))]
            for runs in nearest
        ])
        out[n_images] = tuple(candidates[i] for i in _greedy(scores, points, size))
    return out


def _greedy(scores: np.ndarray, points: np.ndarray, size: int) -> list[int]:
    """Members in order; none closer to an earlier one than a change of backbone (distance 4).

    The spacing is a hedge: on a new dataset, two near-identical configurations fail together
    (in the replay they turn into the very same recorded run), which the datasets the portfolio
    is derived from cannot show. It lowered the 16-h replay regret from 0.013 to 0.011 (README).
    """
    chosen: list[int] = []
    current = np.ones(scores.shape[1])
    taken = np.zeros(len(scores), dtype=bool)
    for _ in range(size):
        gain = np.minimum(scores, current).mean(axis=1)
        gain[taken] = np.inf
        best = int(np.argmin(gain))
        if gain[best] >= current.mean():  # nothing adds coverage: then the best on average
            mean = scores.mean(axis=1)
            mean[taken] = np.inf
            best = int(np.argmin(mean))
        if taken[best]:  # every candidate is near a member already
            break
        chosen.append(best)
        current = np.minimum(scores[best], current)
        taken |= np.abs(points - points[best]) @ WEIGHTS < MIN_SPACING
    return chosen


def _stretched(checkpoints: Sequence[float], pool: Pool, n_images: int | None) -> list[float]:
    scale = 1.0 if n_images is None else math.sqrt(pool.n_images / n_images)
    return [t * scale for t in checkpoints]


def _anytime_regret(pool: Pool, run: Run, checkpoints: Sequence[float]) -> list[float]:
    """Regret of `run` alone at each checkpoint (1 before its first epoch ends)."""
    done = np.cumsum(run.cost[:MAX_EPOCHS])
    best_so_far = np.maximum.accumulate(run.curve[:MAX_EPOCHS])
    out = []
    for t in checkpoints:
        k = int(np.searchsorted(done, t, side="right"))
        out.append(1.0 if k == 0 else pool.regret(float(best_so_far[k - 1])))
    return out


def make_strategy(name: str, seed: int, portfolio: tuple[dict[str, Any], ...],
                  curve_model: Any = None) -> Strategy:
    """The arm's strategy, as a job's spec would build it. The pausing arms are `pruner:
    freeze-thaw` with their options, `curve_model` the learned arm's (fitted without the
    scored dataset; None: the shipped one)."""
    space = SearchSpace(max_epochs=MAX_EPOCHS)
    if name == "random":
        return Strategy(space, sampler="random", pruner="none", seed=seed, warm_start=False)
    if name == "asha":  # Ray Tune's ASHAScheduler defaults: grace period 1, reduction factor 4
        return Strategy(space, sampler="random", pruner="sha", seed=seed, warm_start=False,
                        pruner_options={"min_resource": 1, "reduction_factor": 4})
    if name in PAUSING:
        options = PAUSING[name]
        anchor = name in ("asha-promotion", "hyperband-pause")  # no portfolio
        return Strategy(space, sampler="random", pruner=FREEZE_THAW, seed=seed,
                        warm_start=not anchor, portfolio=() if anchor else portfolio,
                        pruner_options=dict(options), curve_model=curve_model)
    if name == "tpe":  # the model-based pair, no portfolio (the defaults before the replay)
        return Strategy(space, sampler="tpe", pruner="hyperband", seed=seed, warm_start=False)
    return Strategy(space, seed=seed, portfolio=portfolio)  # what a job with no strategy gets


def simulate(strategy: Strategy, pool: Pool, workers: int, horizon: float) -> list[tuple[float, float]]:
    """Drive `strategy` over `pool` on a simulated clock; returns (time, best value so far) steps."""
    return best_trace(pool, lambda seen: drive(strategy, pool, workers, horizon, seen))


def best_trace(pool: Pool, run: Callable[[Callable[[float, Run, float], bool]], Any]
               ) -> list[tuple[float, float]]:
    """The (time, best value so far) steps of a simulation `run` that calls its argument with
    every value seen, and stops once that says the pool's best was found."""
    best, trace = -math.inf, [(0.0, -math.inf)]

    def seen(now: float, run: Run, value: float) -> bool:
        nonlocal best
        if value > best:
            best = value
            trace.append((now, best))
        return best >= pool.best  # nothing left to find

    run(seen)
    return trace


def drive(strategy: Strategy, pool: Pool, workers: int, horizon: float,
          seen: Callable[[float, Run, float], bool],
          costs: Callable[[Run], dict[str, float]] = lambda run: {}) -> None:
    """The simulated cluster: `workers` trials at a time, each epoch taking its recorded
    seconds, reported to the strategy (which may prune it) and handed to `seen(time, run,
    value)`, which returns True when nothing is left to find. `costs`: a run's costs, put on
    its trial before it starts, as a job's bridge does."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "replay")
    events: list[tuple[float, int, optuna.Trial, Run, int]] = []
    order = itertools.count()

    def start(now: float) -> None:
        trial = strategy.ask(study)
        run = pool.nearest(strategy.space.sample(trial))
        if measured := costs(run):
            trial.set_user_attr(keys.COSTS, measured)
        heapq.heappush(events, (now + run.cost[0], next(order), trial, run, 1))

    for _ in range(workers):
        start(0.0)
    while events:
        now, _, trial, run, epoch = heapq.heappop(events)
        if now > horizon:
            break
        value = run.curve[epoch - 1]
        if seen(now, run, value):
            break
        last = min(len(run.curve), MAX_EPOCHS)
        pruned = strategy.report(study, trial, epoch, value, last=epoch == last)
        if epoch == last:
            curve = dict(enumerate(run.curve[:last], start=1))
            study.tell(trial, strategy.final_values(curve, costs(run)))
        elif pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            heapq.heappush(events, (now + run.cost[epoch], next(order), trial, run, epoch + 1))
            continue
        start(now)


def regrets(trace: list[tuple[float, float]], pool: Pool, budgets: Sequence[float]) -> list[float]:
    out = []
    for budget in budgets:
        seen = max(value for time, value in trace if time <= budget)
        out.append(1.0 if seen == -math.inf else pool.regret(seen))
    return out


@dataclass(frozen=True)
class Cell:
    dataset: str
    strategy: str
    seed: int
    regrets: tuple[float, ...]


def held_out_portfolio(pools: dict[str, Pool], dataset: str) -> tuple[dict[str, Any], ...]:
    """What a job on `dataset` would ship with, derived without it: as many members, for the
    same size bin."""
    others = [p for d, p in pools.items() if d != dataset]
    n_images = portfolio_size(pools[dataset].n_images)
    return derive_portfolio(others, len(PORTFOLIOS[n_images]), n_images)


def _one(args: tuple[Path, str, str, int, int, tuple[float, ...]]) -> Cell:
    data, dataset, name, seed, workers, budgets = args
    return replay_cell(load_pools(data), dataset, name, seed, workers, budgets)


def replay_cell(pools: dict[str, Pool], dataset: str, name: str, seed: int, workers: int,
                budgets: Sequence[float], portfolio: tuple[dict[str, Any], ...] | None = None
                ) -> Cell:
    """`dataset`'s regrets under strategy `name`, with `portfolio` (default: the one derived
    without it, for the strategies that warm-start)."""
    held_out = pools[dataset]
    with_portfolio = name in ("default", "default-promotion", "freeze-thaw", "freeze-thaw-early")
    if portfolio is None:
        portfolio = held_out_portfolio(pools, dataset) if with_portfolio else ()
    if name in PAUSING:
        from benchmarks.freeze_thaw_replay import held_out_model, simulate_paused

        model = held_out_model(pools, dataset) if name.startswith("freeze-thaw") else None
        strategy = make_strategy(name, seed, portfolio, model)
        trace = simulate_paused(strategy, held_out, workers, max(budgets))
    else:
        strategy = make_strategy(name, seed, portfolio)
        trace = simulate(strategy, held_out, workers, max(budgets))
    return Cell(dataset, name, seed, tuple(regrets(trace, held_out, budgets)))


def run(
    data: Path,
    workers: int = 4,
    seeds: int = 3,
    budgets: Sequence[float] = (3600, 14400, 57600),
    strategies: Sequence[str] = ("random", "asha", "default"),
    datasets: Sequence[str] | None = None,
    processes: int | None = None,
    progress: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    names = datasets or list(load_pools(data))
    jobs = [(data, d, s, seed, workers, tuple(budgets))
            for d in names for s in strategies for seed in range(seeds)]
    return in_processes(_one, jobs, processes, progress)


def in_processes(one: Callable[[Any], C], jobs: Sequence[Any], processes: int | None,
                 progress: Callable[[C], None] | None) -> list[C]:
    """`one` over `jobs` on `processes` cores, each result handed to `progress` as it comes."""
    cells = []
    with ProcessPoolExecutor(processes) as pool:
        for cell in pool.map(one, jobs):
            cells.append(cell)
            if progress:
                progress(cell)
    return cells


def mean_regret(cells: Sequence[Cell], strategy: str, budget_index: int) -> float:
    return statistics.fmean(c.regrets[budget_index] for c in cells if c.strategy == strategy)
