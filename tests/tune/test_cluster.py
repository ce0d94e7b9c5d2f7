"""Multi-node behaviour, proven with a real 2-node Ray cluster on one machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_trials_spread_over_two_nodes(tmp_path: Path) -> None:
    script = Path(__file__).with_name("cluster_job.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "automl-data")],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["state"] == "succeeded", report["error"]
    assert report["complete"] == 4
    # the head has no CPUs: every trial ran on a worker node, and both worker nodes were used
    assert set(report["trial_nodes"]) == set(report["worker_nodes"])


def test_a_two_worker_trial_spans_two_nodes(tmp_path: Path) -> None:
    """Two workers of 0.9 CPU on two 1-CPU nodes: the group's placement group must spread
    over both, and gloo runs between them; each epoch reaches the study once."""
    script = Path(__file__).with_name("cluster_job.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "automl-data"), "--data-parallel"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["state"] == "succeeded", report["error"]
    assert report["complete"] == 1
    assert report["epochs"] == [[1, 2]]
