"""Data-parallel trials' groups, seen from the driver: a group whose trial has ended loses its
placement group and its folder, whoever ended it.

A group's trial aborts the group itself when it ends (`workers.tune_adapter.run_group`), but
Tune kills a stopped or paused trial's process without waiting for it, and the group's Ray Train
controller dies with that process; the placement group it created lives on with the job
(ray#54305). Ray Train's fix, a detached cleaner actor (ray#58515), finds the cluster by
address discovery, which fails where one machine runs several Ray instances (a test machine, a
shared node). So the driver, which knows which trials still run, removes the placement group
rank 0 wrote down beside the group's run folder, and the folder, once the trial is not running.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial as RayTrial
from ray.util.placement_group import PlacementGroup, remove_placement_group

from workers.tune_adapter import PLACEMENT_GROUP


class GroupReaper(tune.Callback):
    """Removes the placement group and folder of every group whose trial is not running."""

    def __init__(self, storage: Path, every_s: float = 1.0) -> None:
        self.storage, self.every_s, self._last = storage, every_s, 0.0

    def on_step_end(self, iteration: int, trials: list[RayTrial], **info: Any) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.reap({t.trial_id for t in trials if t.status == RayTrial.RUNNING})

    def on_trial_complete(self, iteration: int, trials: list[RayTrial], trial: RayTrial,
                          **info: Any) -> None:
        self.reap({t.trial_id for t in trials if t.status == RayTrial.RUNNING} - {trial.trial_id})

    def on_experiment_end(self, trials: list[RayTrial], **info: Any) -> None:
        self.reap(set())

    def reap(self, running: set[str]) -> list[str]:
        """The trials whose group was reaped."""
        reaped = []
        for record in self.storage.glob(f"*{PLACEMENT_GROUP}"):
            trial_id = record.name.removesuffix(PLACEMENT_GROUP)
            if trial_id in running:
                continue
            remove_recorded(record)
            shutil.rmtree(self.storage / trial_id, ignore_errors=True)
            reaped.append(trial_id)
        return reaped


def remove_recorded(record: Path) -> None:
    """Remove the placement group whose id the file holds (gone already: nothing to do)."""
    from ray._raylet import PlacementGroupID

    with contextlib.suppress(OSError, ValueError):
        group = PlacementGroup(PlacementGroupID(bytes.fromhex(record.read_text().strip())))
        with contextlib.suppress(Exception):
            remove_placement_group(group)
    record.unlink(missing_ok=True)
