"""Cost-aware portfolio derivations, replayed leave-one-dataset-out (issue 28, the 1-h / 4-h gap).

Not shipped: what was tried to order the portfolio by what a configuration costs on a big
dataset (docs/benchmarks.md, "Cost-aware portfolios"). Each variant derives the held-out
dataset's portfolio without it, as `replay.held_out_portfolio` does, and the `default` and
`freeze-thaw` arms replay it:

- `sqrt`: the shipped derivation (clock stretched by sqrt(pool size / size), checkpoints 15 min,
  1, 4, 16 h);
- `linear`: each recorded epoch's seconds scaled by the size ratio itself (what an epoch costs on
  the new dataset), judged at the budgets 1, 4, 16 h only; `linear-15min` with the 15-min
  checkpoint too; `power-0.75`, `sqrt-budgets`: the power 0.75 / 0.5 at the budgets only;
- `head-K`: the first K members of `linear`, then the shipped portfolio's (the first slots are
  what decides the first hour);
- `cheap-K` / `big-cheap-K`: the shipped portfolio with its first K members reordered by their
  expected first-epoch seconds on the new dataset (median over the other datasets of the
  nearest run's, scaled by the size ratio), for every size / from 32,000 images up;
- `nested`: `sqrt` or `linear`, chosen for each scored dataset D by an inner leave-one-dataset-out
  (each variant's portfolio derived without D and D', the `default` arm replayed on every D',
  one seed; the score as `nested_variants.choose` weighs budgets), D scored by the chosen
  variant's outer replay.

`python -m benchmarks.portfolio_variants [VARIANTS] [ARMS] [DATASETS] [SEEDS]` (comma lists;
defaults: all variants but `nested`, both arms, every dataset, 3 seeds) prints one line per
variant and arm: the mean regret at 1, 4, 16 h and per dataset.
"""

from __future__ import annotations

import functools
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from automl.search.portfolio import PORTFOLIOS
from automl.search.strategy import portfolio_size
from benchmarks import replay
from benchmarks.replay import CHECKPOINTS, Pool, Run, features, load_pools, project

DATA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "finetune-curves"
BUDGETS = (3600.0, 14400.0, 57600.0)
# name -> (power of the size ratio, checkpoints)
SCALED: dict[str, tuple[float, tuple[float, ...]]] = {
    "sqrt": (0.5, tuple(CHECKPOINTS)),
    "linear": (1.0, BUDGETS),
    "linear-15min": (1.0, tuple(CHECKPOINTS)),
    "power-0.75": (0.75, BUDGETS),
    "sqrt-budgets": (0.5, BUDGETS),
}
VARIANTS = (*SCALED, "head-2", "head-4", "cheap-8", "big-cheap-8")
NESTED = ("sqrt", "linear")  # what the nested choice is among, fixed beforehand


class Candidates:
    """Every recorded configuration (projected to the space), its nearest run in every pool."""

    def __init__(self, pools: dict[str, Pool]) -> None:
        self.pools = pools
        self.names = list(pools)
        configs = [(d, project(run.config)) for d in self.names for run in pools[d].runs]
        self.source = np.array([d for d, _ in configs])
        self.configs = [c for _, c in configs]
        self.points = np.stack([features(c) for c in self.configs])
        self.nearest: dict[str, list[Run]] = {
            d: [p.nearest(c) for c in self.configs] for d, p in pools.items()}

    @functools.cache  # noqa: B019 (one instance a process)
    def scores(self, dataset: str, n_images: int, power: float,
               checkpoints: tuple[float, ...]) -> np.ndarray:
        pool = self.pools[dataset]
        at = [t * (pool.n_images / n_images) ** power for t in checkpoints]
        return np.array([replay._anytime_regret(pool, run, at) for run in self.nearest[dataset]])

    def greedy(self, excluded: set[str], n_images: int, power: float,
               checkpoints: tuple[float, ...], size: int) -> list[dict[str, Any]]:
        """`replay.derive_portfolio` over the pools not `excluded` (the same members)."""
        keep = [d for d in self.names if d not in excluded]
        rows = np.isin(self.source, keep)
        scores = np.concatenate([self.scores(d, n_images, power, checkpoints)[rows]
                                 for d in keep], axis=1)
        index = np.flatnonzero(rows)
        return [self.configs[index[i]] for i in replay._greedy(scores, self.points[rows], size)]

    def first_epoch(self, config: dict[str, Any], excluded: set[str], n_images: int) -> float:
        """Expected seconds of `config`'s first epoch on `n_images`, from the other pools."""
        return statistics.median(p.nearest(config).cost[0] * n_images / p.n_images
                                 for d, p in self.pools.items() if d not in excluded)

    def portfolio(self, variant: str, excluded: set[str], dataset: str
                  ) -> tuple[dict[str, Any], ...]:
        n_images = portfolio_size(self.pools[dataset].n_images)
        size = len(PORTFOLIOS[n_images])
        if variant in SCALED:
            return tuple(self.greedy(excluded, n_images, *SCALED[variant], size))
        shipped = self.greedy(excluded, n_images, *SCALED["sqrt"], size)
        kind, k = variant.rsplit("-", 1)
        if kind == "head":
            head = self.greedy(excluded, n_images, *SCALED["linear"], size)[:int(k)]
            return tuple((head + [c for c in shipped if c not in head])[:size])
        if kind == "cheap" or (kind == "big-cheap" and n_images >= 32000):
            head = sorted(shipped[:int(k)],
                          key=lambda c: self.first_epoch(c, excluded, n_images))
            return tuple(head + shipped[int(k):])
        return tuple(shipped)


def outer(candidates: Candidates, variant: str, arm: str, dataset: str, seed: int
          ) -> list[float]:
    """`dataset`'s regret at the budgets, its portfolio derived without it by `variant`."""
    portfolio = candidates.portfolio(variant, {dataset}, dataset)
    return list(replay.replay_cell(candidates.pools, dataset, arm, seed, 4, BUDGETS,
                                   portfolio).regrets)


def inner_choice(candidates: Candidates, dataset: str, variants: Sequence[str]) -> str:
    """The variant `dataset` gets: lowest `default` regret on the other datasets, each replayed
    (seed 0) with a portfolio derived without it and without `dataset`."""
    others = [d for d in candidates.names if d != dataset]
    means = {}
    for v in variants:
        cells = []
        for d in others:
            strategy = replay.make_strategy("default", 0, candidates.portfolio(v, {dataset, d}, d))
            trace = replay.simulate(strategy, candidates.pools[d], 4, max(BUDGETS))
            cells.append(replay.regrets(trace, candidates.pools[d], BUDGETS))
        means[v] = [statistics.fmean(c[i] for c in cells) for i in range(len(BUDGETS))]
    avg = [statistics.fmean(means[v][i] for v in variants) for i in range(len(BUDGETS))]
    return min(variants, key=lambda v: sum(m / a if a else 1.0
                                           for m, a in zip(means[v], avg, strict=True)))


def main(argv: Sequence[str]) -> None:
    variants = argv[0].split(",") if argv else list(VARIANTS)
    arms = argv[1].split(",") if len(argv) > 1 else ["default", "freeze-thaw"]
    pools = load_pools(DATA)
    datasets = argv[2].split(",") if len(argv) > 2 else list(pools)
    seeds = int(argv[3]) if len(argv) > 3 else 3
    candidates = Candidates(pools)
    chosen = {}
    if "nested" in variants:
        chosen = {d: inner_choice(candidates, d, NESTED) for d in datasets}
        print("nested choice:", chosen, flush=True)
    for variant in variants:
        for arm in arms:
            per = {d: [outer(candidates, chosen.get(d, variant), arm, d, s) for s in range(seeds)]
                   for d in datasets}
            mean = [statistics.fmean(r[i] for rs in per.values() for r in rs) for i in range(3)]
            detail = " ".join(d + " " + "/".join(
                f"{statistics.fmean(r[i] for r in rs):.3f}" for i in range(3))
                for d, rs in per.items())
            print(f"{variant:13s} {arm:12s} " + "  ".join(f"{m:.4f}" for m in mean)
                  + f"   {detail}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
