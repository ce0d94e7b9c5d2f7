"""The replay with backbones held out, not only datasets: does the warm start still help when the
job's backbone is one the portfolio knows nothing of (`automl-bench replay --hold-out-backbones`)?

For each dataset and each backbone family in turn, the family plays the user's fixed backbone:
the job's space is narrowed to that family's backbones, the pool is that dataset's runs of the
family, and the portfolio is derived as jobs derive theirs but without the dataset and without
any run of the family (so, to the portfolio, the family is as new as a user's resnet10t). Arms:

- `default`: that portfolio first (its members' backbone dropped, since the space cannot take it:
  their other settings kept), then random sampling + successive halving: what jobs did before
  `automl.search.applicability`;
- `random`: random sampling + the same successive halving, no portfolio;
- `guarded`: what a job does now: `warm_start_off` judges the space against the backbones the
  portfolio was derived from, and drops the portfolio when it does not apply;
- `adapt`: the portfolio with each member's lr, batch size and warmup dropped (the sampler
  draws them), the rest kept: the alternative to falling back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from automl.search.applicability import warm_start_off
from automl.search.overrides import Choices
from automl.search.portfolio import PORTFOLIOS
from automl.search.space import DEFAULT_BACKBONES, SearchSpace
from automl.search.strategy import Strategy, portfolio_size
from benchmarks.replay import (
    MAX_EPOCHS,
    Cell,
    Pool,
    derive_portfolio,
    in_processes,
    load_pools,
    regrets,
    simulate,
)

ARMS = ("default", "random", "guarded", "adapt")
# architecture families of the recorded backbones (a family, not a single backbone, is held out:
# its siblings would teach the portfolio what suits it)
FAMILIES = ("mobilevit", "edgenext", "dla", "xcit", "deit", "convnext", "efficientnet", "volo",
            "beit", "swin")
MIN_RUNS = 8  # a family with fewer runs on a dataset is no pool to search
RECENTRED = ("lr", "batch_size", "warmup_epochs")  # what `adapt` leaves to the sampler


def family(backbone: str) -> str:
    return next(f for f in FAMILIES if f in backbone.split(".")[0])


def without(pool: Pool, name: str) -> Pool | None:
    runs = [r for r in pool.runs if family(r.config["backbone"]) != name]
    return Pool.of(runs, pool.n_images) if runs else None


def only(pool: Pool, name: str) -> Pool | None:
    runs = [r for r in pool.runs if family(r.config["backbone"]) == name]
    return Pool.of(runs, pool.n_images) if len(runs) >= MIN_RUNS else None


def arm_strategy(arm: str, space: SearchSpace, seed: int, portfolio: tuple[dict[str, Any], ...],
                 recorded: set[str]) -> Strategy:
    if arm == "random":
        return Strategy(space, seed=seed, warm_start=False)
    if arm == "guarded" and warm_start_off(space, recorded) is not None:
        return Strategy(space, seed=seed)  # warm start asked for, no portfolio: the sampler
    if arm == "adapt":
        portfolio = tuple({k: v for k, v in m.items() if k not in RECENTRED} for m in portfolio)
    return Strategy(space, seed=seed, portfolio=portfolio)


def _one(args: tuple[Path, str, str, tuple[str, ...], int, int, tuple[float, ...]]) -> list[Cell]:
    data, dataset, held, arms, seeds, workers, budgets = args
    pools = load_pools(data)
    pool = only(pools[dataset], held)
    if pool is None:
        return []
    others = [p for d, q in pools.items() if d != dataset and (p := without(q, held)) is not None]
    recorded = {r.config["backbone"] for p in others for r in p.runs}
    n_images = portfolio_size(pools[dataset].n_images)
    portfolio = derive_portfolio(others, len(PORTFOLIOS[n_images]), n_images)
    backbones = tuple(b for b in DEFAULT_BACKBONES if family(b) == held)
    space = SearchSpace({"backbone": Choices(backbones)}, max_epochs=MAX_EPOCHS)
    done: list[tuple[Strategy, int, tuple[float, ...]]] = []
    cells = []
    for arm in arms:
        for seed in range(seeds):
            strategy = arm_strategy(arm, space, seed, portfolio, recorded)
            same = next((v for s, n, v in done if n == seed and _alike(s, strategy)), None)
            if same is None:  # `guarded` that falls back is `random` over again: not replayed
                same = tuple(regrets(simulate(strategy, pool, workers, max(budgets)), pool, budgets))
                done.append((strategy, seed, same))
            cells.append(Cell(f"{dataset}/{held}", arm, seed, same))
    return cells


def _alike(a: Strategy, b: Strategy) -> bool:
    """The same search: no portfolio tried by either (whether warm start was asked or not), or
    the same one."""
    return (a.sampler, a.pruner, a.seed) == (b.sampler, b.pruner, b.seed) and (
        (a.portfolio if a.warm_start else ()) == (b.portfolio if b.warm_start else ()))


def run(
    data: Path,
    workers: int = 4,
    seeds: int = 3,
    budgets: Sequence[float] = (3600, 14400, 57600),
    arms: Sequence[str] = ARMS,
    datasets: Sequence[str] | None = None,
    families: Sequence[str] = FAMILIES,
    processes: int | None = None,
    progress: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    names = datasets or list(load_pools(data))
    jobs = [(data, d, f, tuple(arms), seeds, workers, tuple(budgets)) for d in names for f in families]

    def each(cells: list[Cell]) -> None:
        for cell in cells:
            if progress:
                progress(cell)

    return [c for cells in in_processes(_one, jobs, processes, each) for c in cells]


def worse_than(cells: Sequence[Cell], arm: str, anchor: str, budget_index: int) -> int:
    """On how many (dataset, family) pools `arm`'s mean regret over seeds is above `anchor`'s."""
    def mean(name: str, pool: str) -> float:
        values = [c.regrets[budget_index] for c in cells if c.strategy == name and c.dataset == pool]
        return sum(values) / len(values)

    pools = {c.dataset for c in cells}
    return sum(mean(arm, p) > mean(anchor, p) + 1e-12 for p in pools)

