"""Data-parallel trials (`resources.workers` > 1) as Ray Tune runs them, on real local Ray with
real gloo: a group that loses a worker mid-epoch restarts from its last checkpoint without
reporting an epoch twice. (A pruned group freeing its placement group: the job in
tests/jobs/test_data_parallel_job.py.)"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from automl.tune.groups import GroupReaper
from workers.tune_adapter import TRIAL_SHARE, GroupSize, run_tune_trial

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3,
        "augment": "none"}


def group_trainable(tmp: Path, max_failures: int = 0) -> Any:
    group = GroupSize(workers=2, cpu=0.5, gpu=0, storage=str(tmp / ".groups"),
                      max_failures=max_failures)
    return tune.with_resources(tune.with_parameters(run_tune_trial, group=group),
                               {"cpu": TRIAL_SHARE})


def _train_workers() -> list[int]:
    """This test process's Ray Train worker processes (descendants: local Ray is ours)."""
    parents: dict[int, int] = {}
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parents.get(pid, 1)
        return False

    return sorted(pid for pid, title in titles.items()
                  if "RayTrainWorker" in title and ours(pid))


class KillOneWorkerInEpochTwo(tune.Callback):
    """After epoch 1 is reported, kill one of the group's two workers while it trains epoch 2."""

    def __init__(self) -> None:
        self.killed: list[int] = []
        self.reported: list[tuple[int, int]] = []  # (epoch, training_iteration) as Tune saw them

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        # counted here, not from result.json: a job run earlier in this process turns Tune's
        # file loggers off (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS)
        self.reported.append((result["epoch"], result["training_iteration"]))
        if result.get("epoch") == 1 and not self.killed:
            threading.Timer(0.7, self._kill).start()

    def _kill(self) -> None:
        workers = _train_workers()
        if workers:
            os.kill(workers[-1], signal.SIGKILL)
            self.killed.append(workers[-1])


def test_a_group_that_loses_a_worker_resumes_from_its_checkpoint_counting_once(
    tmp_path: Path,
) -> None:
    killer = KillOneWorkerInEpochTwo()
    grid = tune.Tuner(
        group_trainable(tmp_path, max_failures=1),
        param_space={**TINY, "epochs": 3},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="killed", verbose=0,
                                  callbacks=[killer, GroupReaper(tmp_path / ".groups")]),
    ).fit()
    result = grid[0]
    assert killer.killed, "no Ray Train worker was found to kill"
    assert result.error is None, result.error
    # epoch 2 trained again, reported once
    assert killer.reported == [(1, 1), (2, 2), (3, 3)]
    assert result.metrics["val_accuracy"] >= 0.8
