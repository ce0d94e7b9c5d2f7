"""Which freeze-thaw variant a held-out dataset gets, chosen by a nested leave-one-dataset-out.

For each scored dataset D, every variant (a set of `pruner: freeze-thaw` options) is replayed on
each other dataset D' with a portfolio and a curve model derived without D and without D' (the
inner leave-one-dataset-out); the variant with the lowest inner regret is the one D gets, and D's
score is that variant's outer replay (portfolio and curve model derived without D only). So
nothing about D decides which variant scores on D. The inner regret weighs every budget alike:
each budget's mean regret is divided by the mean over the variants at that budget, then summed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.search.space import SearchSpace
from automl.search.strategy import FREEZE_THAW, Strategy
from benchmarks.freeze_thaw_replay import held_out_model, simulate_paused
from benchmarks.replay import (
    MAX_EPOCHS,
    Cell,
    held_out_portfolio,
    in_processes,
    load_pools,
    regrets,
)

# the variants the inner choice is among: `strategy.pruner_options` of `pruner: freeze-thaw`
VARIANTS: dict[str, dict[str, Any]] = {
    "learned": {},  # what `pruner: freeze-thaw` gets
    "promotion": {"learned": False},
    "learned-early": {"early": True},
}


@dataclass(frozen=True)
class InnerCell:
    excluded: str  # the outer dataset, left out of everything
    scored: str  # the inner dataset replayed
    variant: str
    seed: int
    regrets: tuple[float, ...]


def _replay(data: Path, excluded: set[str], scored: str, variants: Sequence[str],
            seeds: int, workers: int, budgets: tuple[float, ...]
            ) -> list[tuple[str, int, tuple[float, ...]]]:
    """Each variant and seed on `scored`, with what a job would ship derived without
    `excluded` and `scored`: (variant, seed, regrets)."""
    pools = {d: p for d, p in load_pools(data).items() if d not in excluded}
    portfolio = held_out_portfolio(pools, scored)
    model = held_out_model(pools, scored)
    out = []
    for name in variants:
        for seed in range(seeds):
            strategy = Strategy(SearchSpace(max_epochs=MAX_EPOCHS), sampler="random",
                                pruner=FREEZE_THAW, seed=seed, portfolio=portfolio,
                                pruner_options=dict(VARIANTS[name]), curve_model=model)
            trace = simulate_paused(strategy, pools[scored], workers, max(budgets))
            out.append((name, seed, tuple(regrets(trace, pools[scored], budgets))))
    return out


def _inner(args: tuple[Path, str, str, tuple[str, ...], int, int, tuple[float, ...]]
           ) -> list[InnerCell]:
    data, excluded, scored, variants, seeds, workers, budgets = args
    return [InnerCell(excluded, scored, name, seed, r) for name, seed, r in
            _replay(data, {excluded}, scored, variants, seeds, workers, budgets)]


def _outer(args: tuple[Path, str, tuple[str, ...], int, int, tuple[float, ...]]) -> list[Cell]:
    data, scored, variants, seeds, workers, budgets = args
    return [Cell(scored, name, seed, r) for name, seed, r in
            _replay(data, set(), scored, variants, seeds, workers, budgets)]


def choose(inner: Sequence[InnerCell], excluded: str, variants: Sequence[str],
           n_budgets: int) -> str:
    """The variant with the lowest inner regret for outer dataset `excluded`."""
    mine = [c for c in inner if c.excluded == excluded]
    means = {v: [statistics.fmean(c.regrets[i] for c in mine if c.variant == v)
                 for i in range(n_budgets)] for v in variants}
    scale = [max(statistics.fmean(means[v][i] for v in variants), 1e-12) for i in range(n_budgets)]
    return min(variants, key=lambda v: sum(means[v][i] / scale[i] for i in range(n_budgets)))


@dataclass(frozen=True)
class Nested:
    outer: list[Cell]  # every variant on every dataset (strategy = the variant's name)
    inner: list[InnerCell]
    chosen: dict[str, str]  # dataset -> variant

    def nested_cells(self) -> list[Cell]:
        """The `nested` arm: each dataset's outer cells of the variant chosen for it."""
        return [Cell(c.dataset, "nested", c.seed, c.regrets) for c in self.outer
                if self.chosen[c.dataset] == c.strategy]


def run(data: Path, workers: int = 4, seeds: int = 3, inner_seeds: int = 3,
        budgets: Sequence[float] = (3600, 14400, 57600),
        variants: Sequence[str] = tuple(VARIANTS), datasets: Sequence[str] | None = None,
        processes: int | None = None, progress: Callable[[str], None] | None = None) -> Nested:
    names = list(datasets or load_pools(data))
    every = list(load_pools(data))
    b, v = tuple(budgets), tuple(variants)
    outer_jobs = [(data, d, v, seeds, workers, b) for d in names]
    inner_jobs = [(data, d, other, v, inner_seeds, workers, b)
                  for d in names for other in every if other != d]

    def said(cells: Sequence[Any]) -> None:
        if progress is None:
            return
        for c in cells:
            where = f"without {c.excluded}: {c.scored}" if isinstance(c, InnerCell) else c.dataset
            progress(f"{where} {c.variant if isinstance(c, InnerCell) else c.strategy} seed "
                     f"{c.seed}: " + " ".join(f"{r:.4f}" for r in c.regrets))

    outer = [c for cells in in_processes(_outer, outer_jobs, processes, said) for c in cells]
    inner = [c for cells in in_processes(_inner, inner_jobs, processes, said) for c in cells]
    chosen = {d: choose(inner, d, v, len(b)) for d in names}
    return Nested(outer, inner, chosen)
