"""The replay with backbone families held out: each family in turn as the job's fixed backbone,
unknown to the portfolio, on a tiny generated slice of recorded runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from automl.search.applicability import RECORDED_BACKBONES
from benchmarks.replay import _BACKBONE, _RECORDED_BACKBONE
from benchmarks.replay_backbones import ARMS, _one
from tests.benchmarks.test_replay import write_recorded_runs


def test_each_held_out_family_is_replayed_by_every_arm(tmp_path: Path) -> None:
    write_recorded_runs(tmp_path, datasets=3, runs=60)
    cells = _one((tmp_path, "D0", "mobilevit", ARMS, 1, 2, (120.0, 600.0, 6000.0)))
    assert [c.strategy for c in cells] == list(ARMS)
    assert all(c.dataset == "D0/mobilevit" and min(c.regrets) >= 0.0 for c in cells)
    by_arm = {c.strategy: c.regrets for c in cells}
    # the family is unknown to the portfolio, so the job's guard drops it: the sampler alone
    assert by_arm["guarded"] == by_arm["random"]
    assert _one((tmp_path, "D0", "beit", ARMS, 1, 2, (120.0,))) == []  # no runs of it: no pool


def test_the_hold_out_backbones_mode_prints_its_table(tmp_path: Path) -> None:
    write_recorded_runs(tmp_path, datasets=3, runs=60)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("automl-bench")), "replay", "--hold-out-backbones",
         "--data", str(tmp_path), "--workers", "2", "--seeds", "1", "--budgets", "120,600,6000",
         "--datasets", "D0"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "held-out backbones" in done.stdout
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells and cells[0] in ARMS:
            rows[cells[0]] = cells[1:]
    assert set(rows) == set(ARMS)
    assert all(float(r) >= 0.0 for row in rows.values() for r in row[:3])
    assert rows["guarded"] == rows["random"] and rows["random"][3] == "0 / 0 / 0 of 4"


def test_the_shipped_portfolios_recorded_backbones_are_the_guards() -> None:
    """`automl.search.applicability` judges a space against the backbones the recorded runs used."""
    assert set(_RECORDED_BACKBONE.values()) | set(_BACKBONE.values()) == RECORDED_BACKBONES
