"""The thin layer between Ray Tune and the trial engine; the only worker module importing Ray.

Each epoch is reported with its full checkpoint; Ray Tune copies it into the run's storage path
before `tune.report` returns, so the trial's own working folder is scratch: a temporary folder,
gone when the trial ends however it ends. One a killed worker could not remove is removed by the
next trial on that machine (its folder names its process, and that process is gone).

An error the trial's own code raises (a bad setting, a dataset it cannot read, out of memory, a
bug) would be the same on every retry: the trial says so in one last result (`TRIAL_ERROR`, its
last line) before the error reaches Ray, and the driver fails it at once. Ray's retries
(`max_failures`) are for what the trial cannot see: its worker or node lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

import ray
from ray import tune

from workers.config import TrialConfig
from workers.data.index import DatasetIndex
from workers.model.costs import measure_costs
from workers.model.target import COSTS_REQUEST, COSTS_RESULT, LatencyTarget, broken_limits
from workers.train.loop import EpochResult, train

TRIAL_FOLDER = "automl-trial-"
TRIAL_ERROR = "trial_error"  # result key: the last line of the trial's own error, raised next


def run_tune_trial(config: dict[str, Any], index: DatasetIndex | None = None) -> None:
    """Ray Tune function trainable (`_run_trial`); an error of the trial's own is reported
    (`TRIAL_ERROR`) before it is raised. `index`: the job's dataset as its driver indexed it
    (`tune.with_parameters`), so that no trial indexes or fingerprints it again."""
    try:
        _run_trial(config, index)
    except Exception as error:
        if not isinstance(error, ray.exceptions.RayError):  # a lost actor, node or object: Ray's
            with contextlib.suppress(Exception):  # unsaid, the error is retried: as it was
                tune.report({TRIAL_ERROR: _error_line(error)})
        raise


def _error_line(error: BaseException) -> str:
    """The last line of an error as Ray's error text for it ends (a multi-line message's last)."""
    lines = [line.strip() for line in "".join(traceback.format_exception_only(error)).splitlines()]
    return next((line for line in reversed(lines) if line), type(error).__name__)[:500]


def _run_trial(config: dict[str, Any], index: DatasetIndex | None = None) -> None:
    """config is the flat trial config the searcher suggested, with, in a deployment-aware job,
    a request for the configuration's costs: they are measured (or taken from the job's earlier
    measurement) and reported before anything trains, and a configuration over a limit ends
    there."""
    config = dict(config)
    request = config.pop(COSTS_REQUEST, None)
    trial_config = TrialConfig.from_dict(config)
    remove_orphaned_trial_folders()
    node = ray.get_runtime_context().get_node_id()  # which machine ran it, for the user
    checkpoint = tune.get_checkpoint()
    notes: dict[str, Any] = {}
    if request is not None:
        costs = request.get("known") or _measure(trial_config, request)
        if checkpoint is None:  # a retried trial reported them before it died
            tune.report({COSTS_RESULT: request["key"], **costs, "node_id": node})
        if broken_limits(costs, request.get("limits", {})):
            return  # never trains: the driver records the limit it broke
        notes = {"costs": costs, "latency_target": request.get("target")}

    def report(result: EpochResult) -> bool:
        metrics = {**result.report, "node_id": node}
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(result.checkpoint))
        return False  # stopping is the scheduler's call; Ray ends the trial

    index = readable_here(index)
    with tempfile.TemporaryDirectory(prefix=f"{TRIAL_FOLDER}{os.getpid()}-") as scratch:
        workdir = Path(scratch)
        if checkpoint is None:
            train(trial_config, workdir, callback=report, keep_best=False, notes=notes,
                  index=index)
            return
        with checkpoint.as_directory() as resume_from:  # a retry after a worker died
            train(trial_config, workdir, callback=report, resume=Path(resume_from),
                  keep_best=False, notes=notes, index=index)


def readable_here(index: DatasetIndex | None) -> DatasetIndex | None:
    """The driver's index where its files are where it found them (a shared filesystem, or the
    driver's own machine), else None: the trial then indexes its own copy (`builtin:digits` is
    written under each machine's cache folder)."""
    if index is None or not index.files or not index.files[0].exists():
        return None
    return index


def _measure(config: TrialConfig, request: dict[str, Any]) -> dict[str, float]:
    target = LatencyTarget(**request["target"]) if "latency_ms" in request["costs"] else None
    costs = measure_costs(config.backbone, config.img_size, request["num_classes"], target)
    return {name: value for name, value in costs.to_dict().items() if value is not None}


def remove_orphaned_trial_folders(root: Path | None = None) -> list[Path]:
    """Trial folders whose process is gone (a worker killed mid-trial cannot clean up)."""
    removed = []
    for folder in (root or Path(tempfile.gettempdir())).glob(f"{TRIAL_FOLDER}*"):
        match = re.match(rf"{TRIAL_FOLDER}(\d+)-", folder.name)
        if match is None or _alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def can_evaluate_here(gpus_per_trial: float) -> bool:
    """Whether this process can score a checkpoint as well as a trial's worker could.

    Scoring the best trial is a few seconds of compute, but a fresh Ray worker first spends ~8 s
    importing torch, torchvision and timm (`automl-bench overhead`), while the driver has them
    imported already. It can stand in unless the trials asked for a GPU it lacks.
    """
    import torch

    return gpus_per_trial == 0 or torch.cuda.is_available()


def evaluate_on_split(
    checkpoint: tune.Checkpoint, split: str = "test", index: DatasetIndex | None = None,
    *, corruptions: bool = True, seed: int = 0,
) -> dict[str, Any]:
    """The whole evaluation of a trial's checkpoint on one split of its dataset (`automl
    evaluate`: scores, calibration, corruptions), in the driver or as a Ray task on a GPU node:
    its scores as the split's metrics (`workers.evaluate.summary`), the model's `classes`, and
    the report under `evaluation`. `index`: the job's dataset as its driver indexed it;
    `corruptions`, `seed`: the job's `evaluation` settings."""
    from workers.evaluate.report import evaluate
    from workers.evaluate.summary import split_metrics

    with checkpoint.as_directory() as directory:
        report = evaluate(Path(directory), None, split, index=readable_here(index),
                          corruptions=corruptions, seed=seed).to_dict()
    return {**split_metrics(report, split), "classes": report["classes"], "evaluation": report}
