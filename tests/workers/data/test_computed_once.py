"""What is computed once per job is counted in a real job: real calls of the real functions, in
the driver and in every Ray worker (tests/workers/data/counted_job.py)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_a_job_indexes_and_fingerprints_its_dataset_once_on_its_driver(tmp_path: Path) -> None:
    """Two trials and the test score read the driver's index (handed through Ray's object
    store) and its fingerprint: no trial indexes or stats the dataset again, and the preflight
    stats it once, not once per backbone and image size."""
    counts = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    ran = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("counted_job.py")), str(counts),
         str(tmp_path / "home"), "workers.data.sources.load_index",
         "workers.data.fingerprint.dataset_fingerprint", "workers.model.backbone.create_backbone"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    outcome = json.loads(ran.stdout.strip().splitlines()[-1])
    assert outcome["state"] == "succeeded"
    calls = collections.Counter(tuple(line.split()) for line in counts.read_text().splitlines())
    driver = str(outcome["driver"])
    trials = {pid for name, pid in calls if name == "create_backbone" and pid != driver}
    assert trials, f"no counter ran in a Ray worker: {calls}"  # the trials' are counted too
    dataset = {key: n for key, n in calls.items() if key[0] != "create_backbone"}
    assert dataset == {("load_index", driver): 1, ("dataset_fingerprint", driver): 1}, calls


def test_a_weights_file_is_read_once_per_process(tmp_path: Path) -> None:
    """Checked on submit, on the driver and by every trial's backbone: its content is read once
    per process while its size and modification time stay the same (counted by the cache's own
    misses: each one a real read)."""
    import torch
    from safetensors.torch import save_file

    from workers.model import weights

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    before = weights._check_weights_content.cache_info().misses
    for _ in range(3):
        weights.check_weights_file(str(path))
    assert weights._check_weights_content.cache_info().misses - before == 1
    save_file({"a": torch.ones(3)}, str(path))  # changed: read again
    weights.check_weights_file(str(path))
    assert weights._check_weights_content.cache_info().misses - before == 2
