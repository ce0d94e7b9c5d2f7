"""The replay benchmark drives the real strategy over recorded runs and learns across datasets.

The recorded data set is generated here, in the finetune-curves format, so the test needs
nothing outside the repository: three datasets whose best configuration is the same
(a transferable fact) among runs that are otherwise random.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from automl.search.portfolio import PORTFOLIOS
from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from benchmarks.replay import MIN_SPACING, WEIGHTS, features, load_pools, simulate

MODELS = ("swinv2_base_window12to24_192to384_22kft1k", "mobilevit_xxs", "dla46x_c", "volo_d1_384")
ONE_HOT = {"model": MODELS, "opt": ("adamw", "sgd"), "sched": ("cosine", "step"),
           "data_augmentation": ("None", "trivial_augment")}
WINNER = {"model": MODELS[0], "opt": "adamw", "lr": 1e-4, "sched": "cosine", "data_augmentation": "None"}


def write_recorded_runs(root: Path, datasets: int = 3, runs: int = 30) -> None:
    rng = random.Random(0)
    rows, perf, cost = [], {}, {}
    for d in range(datasets):
        name = f"D{d}"
        perf[name], cost[name] = {}, {}
        for r in range(runs):
            choice = {k: rng.choice(v) for k, v in ONE_HOT.items()}
            lr = rng.choice((1e-5, 1e-4, 1e-3, 1e-2))
            if r == 0:
                choice.update({k: v for k, v in WINNER.items() if k != "lr"})
                lr = WINNER["lr"]
            top = 95.0 if r == 0 else rng.uniform(5, 70)
            rid = f"{d}{r:03d}"
            row = {"": rid, "batch_size": 32, "pct_to_freeze": 0.0, "linear_probing": 0, "lr": lr,
                   "weight_decay": 1e-4, "warmup_epochs": 0, "mixup": 0.0, "cutmix": 0.0,
                   "mixup_prob": 0.0, "smoothing": 0.0, "drop": 0.0}
            for key, values in ONE_HOT.items():
                row.update({f"cat:{key}:{v}": int(choice[key] == v) for v in values})
            rows.append(row)
            epochs = rng.randint(3, 8)
            perf[name][rid] = [top * (e + 1) / epochs for e in range(epochs)]
            cost[name][rid] = [60.0] * epochs
    (root / "curves").mkdir(parents=True)
    (root / "curves" / "perf.json").write_text(json.dumps({"info": {}, **perf}))
    (root / "curves" / "cost.json").write_text(json.dumps(cost))
    fields = sorted({k for row in rows for k in row}, key=lambda k: (k != "", k))
    with (root / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def test_replay_runs_through_the_real_strategy_and_pruner(tmp_path: Path) -> None:
    write_recorded_runs(tmp_path)
    pool = load_pools(tmp_path)["D0"]
    strategy = Strategy(SearchSpace(max_epochs=50), sampler="random", pruner="sha", seed=0,
                        warm_start=False)
    trace = simulate(strategy, pool, workers=2, horizon=3000)
    times = [t for t, _ in trace]
    assert times == sorted(times) and max(times) <= 3000
    values = [v for _, v in trace[1:]]
    assert values == sorted(values)  # best so far only improves


def test_default_strategy_carries_what_other_datasets_taught(tmp_path: Path) -> None:
    """`default` derives its portfolio from the other datasets only and finds the winner first."""
    write_recorded_runs(tmp_path)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("automl-bench")), "replay", "--data", str(tmp_path),
         "--workers", "2", "--seeds", "2", "--budgets", "120,600,6000",
         "--strategies", "random,asha,default"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    table = _rows(done.stdout)
    assert set(table) == {"random", "asha", "default"}
    assert all(0.0 <= r <= 1.0 for regrets in table.values() for r in regrets)
    assert table["default"][1] == 0.0  # the shared winner, found in the first round of trials
    assert table["default"][1] < table["random"][1]


def _rows(stdout: str) -> dict[str, list[float]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] in ("random", "asha", "default"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def test_shipped_portfolios_hold_no_near_twins() -> None:
    """Every shipped portfolio is spaced: no member nearer to another than a change of backbone."""
    for n_images, members in PORTFOLIOS.items():
        points = [features(member) for member in members]
        nearest = min(float(np.abs(a - b) @ WEIGHTS)
                      for i, a in enumerate(points) for b in points[i + 1:])
        assert len(members) == 32 and nearest >= MIN_SPACING, n_images


def write_backbone_costs(path: Path) -> None:
    """A latency for each backbone of `write_recorded_runs`, in backbone_costs.json's format."""
    from benchmarks.replay import _BACKBONE, _RECORDED_BACKBONE

    latency = dict(zip(MODELS, (800.0, 9.0, 12.0, 385.0), strict=True))
    table = {"backbones": {_RECORDED_BACKBONE.get(m) or _BACKBONE[m]: {"latency_ms": v}
                           for m, v in latency.items()}}
    path.write_text(json.dumps(table))


def test_pareto_replay_scores_each_arm_by_its_share_of_the_pools_hypervolume(tmp_path: Path) -> None:
    from benchmarks import backbone_costs
    from benchmarks.replay_pareto import shares

    write_recorded_runs(tmp_path / "data")
    write_backbone_costs(tmp_path / "costs.json")
    lat = {b: row["latency_ms"] for b, row in backbone_costs.load(tmp_path / "costs.json").items()}
    pool = load_pools(tmp_path / "data")["D0"]
    every_run = [(0.0, max(r.curve), lat[r.config["backbone"]]) for r in pool.runs]
    assert shares(every_run, pool, lat, [1.0]) == [1.0]  # the whole pool seen: all of it
    done = subprocess.run(
        [str(Path(sys.executable).with_name("automl-bench")), "replay-pareto", "--data",
         str(tmp_path / "data"), "--costs", str(tmp_path / "costs.json"), "--workers", "2",
         "--seeds", "1", "--budgets", "120,600,6000"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] in ("mo-random", "nsga2", "mo-asha", "default"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    assert set(rows) == {"mo-random", "nsga2", "mo-asha", "default"}
    for values in rows.values():  # a share, and what was seen by a budget stays seen
        assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values)
