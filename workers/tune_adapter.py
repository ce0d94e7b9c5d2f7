"""The thin layer between Ray Tune and the trial engine; the only worker module importing Ray.

Each epoch is reported with its full checkpoint; Ray Tune copies it into the run's storage path
before `tune.report` returns, so the trial's own working folder is scratch: a temporary folder,
gone when the trial ends however it ends. One a killed worker could not remove is removed by the
next trial on that machine (its folder names its process, and that process is gone).

An error the trial's own code raises (a bad setting, a dataset it cannot read, out of memory, a
bug) would be the same on every retry: the trial says so in one last result (`TRIAL_ERROR`, its
last line) before the error reaches Ray, and the driver fails it at once. Ray's retries
(`max_failures`) are for what the trial cannot see: its worker or node lost.

A data-parallel trial (`resources.workers` > 1) is the same function trainable, holding only a
sliver of a CPU itself (`TRIAL_SHARE`): it runs a Ray Train V2 `TorchTrainer` whose own
placement group reserves the whole group's resources at once, and forwards each epoch the group
reports to Tune, with its checkpoint, once (`run_group`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train.v2.api.callback import UserCallback

from workers.config import TrialConfig
from workers.data.index import DatasetIndex
from workers.model.costs import measure_costs
from workers.model.target import COSTS_REQUEST, COSTS_RESULT, LatencyTarget, broken_limits
from workers.train.loop import EpochResult, train

TRIAL_FOLDER = "automl-trial-"
TRIAL_ERROR = "trial_error"  # result key: the last line of the trial's own error, raised next
# What a data-parallel trial's own process reserves: it only waits on its group and forwards its
# results. Not 0: Ray would then place any number of trials whose groups cannot start.
TRIAL_SHARE = 0.01


def run_tune_trial(config: dict[str, Any], index: DatasetIndex | None = None,
                   group: GroupSize | None = None) -> None:
    """Ray Tune function trainable (`_run_trial`); an error of the trial's own is reported
    (`TRIAL_ERROR`) before it is raised. `index`: the job's dataset as its driver indexed it
    (`tune.with_parameters`), so that no trial indexes or fingerprints it again. `group`: a
    data-parallel trial's size (None: one process, this one)."""
    try:
        _run_trial(config, index, group)
    except Exception as error:
        if not isinstance(error, ray.exceptions.RayError):  # a lost actor, node or object: Ray's
            with contextlib.suppress(Exception):  # unsaid, the error is retried: as it was
                tune.report({TRIAL_ERROR: _error_line(error)})
        raise


def _error_line(error: BaseException) -> str:
    """The last line of an error as Ray's error text for it ends (a multi-line message's last)."""
    lines = [line.strip() for line in "".join(traceback.format_exception_only(error)).splitlines()]
    return next((line for line in reversed(lines) if line), type(error).__name__)[:500]


def _run_trial(config: dict[str, Any], index: DatasetIndex | None = None,
               group: GroupSize | None = None) -> None:
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
        assert result.checkpoint is not None  # one process: rank 0
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(result.checkpoint))
        return False  # stopping is the scheduler's call; Ray ends the trial

    index = readable_here(index)
    if group is not None and group.workers > 1:
        resume = checkpoint.path if checkpoint is not None else None
        run_group(trial_config, group, index=index, notes=notes, resume=resume,
                  report=lambda metrics, path: tune.report(
                      {**metrics, "node_id": node},
                      checkpoint=tune.Checkpoint.from_directory(path) if path else None))
        return
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


@dataclass(frozen=True)
class GroupSize:
    """A data-parallel trial's group: `workers` processes, each with `cpu` CPUs and `gpu` GPUs;
    `storage`: a folder every node reaches (the job's run folder) where Ray Train keeps the
    group's latest checkpoint; `max_failures`: restarts of the group after a worker is lost."""

    workers: int
    cpu: float
    gpu: float
    storage: str
    max_failures: int = 2


PLACEMENT_GROUP = ".placement_group"  # beside a group's run folder: its placement group's id


class _Forward(UserCallback):
    """Ray Train callback (in the group's controller): each epoch's report, with the checkpoint
    Ray Train persisted from rank 0, handed to the trial's process through `_Mailbox`, which
    reports it to Tune; the controller waits for the answer, as a one-process trial waits in
    `tune.report`, so a pruned group goes no further than the epoch it was pruned at plus the
    one its workers had started.

    Not Ray's `TuneReportCallback`: it forwards rank 0's metrics and only the checkpoint's
    path, so Tune would hold no checkpoint to retry the trial from, keep or publish. Ours
    forwards the checkpoint itself, and the metrics of rank 0 are every rank's (validation is
    all-reduced in the engine)."""

    def __init__(self, mailbox: Any) -> None:
        self.mailbox = mailbox

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        del run_context
        ray.get(self.mailbox.post.remote({
            "metrics": metrics[0],
            "checkpoint": checkpoint.path if checkpoint is not None else None,
            "controller": ray.get_runtime_context().current_actor,
        }))

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        del run_context, worker_exceptions


class _Mailbox:
    """One report at a time from a group's controller to its trial, and the trial's answer.
    A Ray actor of no CPU (one process, where two of Ray's queues would be two)."""

    def __init__(self) -> None:
        import asyncio

        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1)
        self.answers: asyncio.Queue[bool] = asyncio.Queue()

    async def post(self, item: dict[str, Any]) -> bool:
        await self.reports.put(item)
        return await self.answers.get()

    async def take(self, timeout: float) -> dict[str, Any] | None:
        import asyncio

        try:
            return await asyncio.wait_for(self.reports.get(), timeout)
        except TimeoutError:
            return None

    async def answer(self, go_on: bool) -> None:
        await self.answers.put(go_on)


def run_group(
    config: TrialConfig, size: GroupSize, *, index: DatasetIndex | None, notes: dict[str, Any],
    resume: str | None, report: Callable[[dict[str, Any], str | None], None],
) -> None:
    """Train one trial as a data-parallel group of Ray Train workers (a `TorchTrainer`; gloo
    on CPUs, NCCL on GPUs), from `resume` (a checkpoint folder every node reaches) if given;
    `report(metrics, checkpoint folder)` is called once per epoch, in this thread.

    Whatever ends this function (the group done, a group error, Tune stopping the trial: its
    `tune.report` raises SystemExit here) ends the group: its controller is aborted, which
    shuts the workers down and removes the group's placement group. Tune may kill this
    process before that is done (it does not wait for a stopped trial's thread): the
    controller dies with it, and the driver removes the placement group the workers wrote
    down (`automl.tune.groups`; Ray Train's own cleaner, which should, cannot find the
    cluster where a machine runs several)."""
    from ray.train.torch import TorchConfig
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    trial_id = tune.get_context().get_trial_id()
    storage = Path(size.storage)
    shutil.rmtree(storage / trial_id, ignore_errors=True)  # a killed attempt's: Tune's wins
    mailbox: Any = ray.remote(num_cpus=0)(_Mailbox).remote()
    trainer = TorchTrainer(
        _group_worker,
        train_loop_config={"trial": config.to_dict(), "index": index, "notes": notes,
                           "resume": resume,
                           "placement_group_file": str(storage / f"{trial_id}{PLACEMENT_GROUP}")},
        torch_config=TorchConfig(backend="nccl" if size.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=size.workers, use_gpu=size.gpu > 0,
            resources_per_worker={"CPU": size.cpu, "GPU": size.gpu} if size.gpu
            else {"CPU": size.cpu},
            placement_strategy="PACK",
        ),
        run_config=RunConfig(
            name=trial_id, storage_path=str(storage), callbacks=[_Forward(mailbox)],
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=size.max_failures),
        ),
    )
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # raised below, in the trial's thread
            outcome["error"] = error

    thread = threading.Thread(target=fit, name=f"group-{trial_id}", daemon=True)
    controller = None
    thread.start()
    try:
        while True:
            item = ray.get(mailbox.take.remote(0.5))
            if item is None:
                if not thread.is_alive():
                    break
                continue
            controller = item["controller"]
            report(item["metrics"], item["checkpoint"])
            ray.get(mailbox.answer.remote(True))
        if "error" in outcome:
            raise outcome["error"]
    finally:
        if thread.is_alive():  # stopped by Tune, or failed here: end the group now
            _abort(controller, mailbox)
            thread.join(timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(mailbox)
        shutil.rmtree(storage / trial_id, ignore_errors=True)


def _abort(controller: Any, mailbox: Any) -> None:
    """Stop a group mid-run: release its controller if it waits on an answer, then abort it
    (workers shut down, placement group removed); kill it if it does not answer in time."""
    with contextlib.suppress(Exception):
        mailbox.answer.remote(False)
    if controller is None:
        return  # it has reported nothing yet: it dies with this actor, the driver reaps it
    try:
        ray.get(controller.abort.remote(), timeout=30)
    except Exception:
        with contextlib.suppress(Exception):
            ray.kill(controller)


def _group_worker(loop_config: dict[str, Any]) -> None:
    """One rank of a data-parallel trial (a Ray Train worker; its process group initialized by
    Ray Train): the trial engine, resuming from the group's own latest checkpoint after a lost
    worker restarted it, else from the trial's. Rank 0's checkpoint goes with its report."""
    import ray.train
    from ray.train.v2.api.train_fn_utils import get_checkpoint, report
    from ray.train.v2.torch.train_loop_utils import get_device

    config = TrialConfig.from_dict(loop_config["trial"])
    placement = ray.util.get_current_placement_group()
    if placement is not None and ray.train.get_context().get_world_rank() == 0:
        record = Path(loop_config["placement_group_file"])  # for the driver, should this
        record.parent.mkdir(parents=True, exist_ok=True)  # trial's process die first
        record.write_text(placement.id.hex())

    def forward(result: EpochResult) -> bool:
        checkpoint = (ray.train.Checkpoint.from_directory(result.checkpoint)
                      if result.checkpoint is not None else None)
        report(result.report, checkpoint=checkpoint)
        return False  # stopping is Tune's call, through the group's controller

    restarted = get_checkpoint()
    with tempfile.TemporaryDirectory(prefix=f"{TRIAL_FOLDER}{os.getpid()}-") as scratch, \
            contextlib.ExitStack() as stack:
        resume = loop_config["resume"]
        if restarted is not None:
            resume = stack.enter_context(restarted.as_directory())
        train(config, Path(scratch), callback=forward, keep_best=False,
              resume=Path(resume) if resume else None, device=get_device(),
              notes=loop_config["notes"], index=readable_here(loop_config["index"]))
