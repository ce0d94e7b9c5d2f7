"""The job's Ray Tune experiment: built once, restored after a driver restart, kept quiet.

A job whose Ray Tune state exists is resumed (`Tuner.restore` + the study in the database),
after mending what a kill can leave behind; a job whose state is gone (its driver killed before
Ray first saved it, a runner on another machine taking it over) gets a fresh Tune run that asks
only what the budget has left.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial as RayTrial
from ray.tune.logger import JsonLoggerCallback

from automl.errors import JobError
from automl.search.keys import count_trials
from automl.search.spec import JobSpec
from automl.settings import Settings
from automl.tune.bridge import StudyLink, bridge
from automl.tune.groups import GroupReaper
from automl.tune.retention import Keepers, Retention
from automl.tune.stopper import JobStopper
from storage.optuna_storage import retry
from workers.data.index import DatasetIndex
from workers.errors import last_line
from workers.model.target import COSTS, COSTS_REQUEST
from workers.tune_adapter import TRIAL_SHARE, GroupSize, run_tune_trial

GROUPS_FOLDER = ".groups"  # the data-parallel trials' own Ray Train runs, under the job's folder

log = logging.getLogger(__name__)


def run_experiment(
    spec: JobSpec, job_id: str, settings: Settings, link: StudyLink, n_classes: int,
    index: DatasetIndex | None = None,
) -> tune.ResultGrid:
    """Run (or resume) the job's trials until the budget, the target, the time limit or a
    cancel ends them (the cancel, the time and the driver's hold on the job: the job's
    `automl.tune.control`, which the caller registers). `index`: the job's dataset as its
    driver indexed it, handed to every trial through Ray's object store."""
    _quiet_and_parallel(spec)
    path = settings.runs_path / job_id
    trainable = trial_trainable(spec, path, index)
    JobStopper.register(job_id)
    with short_trial_errors(path):
        return _fit(spec, job_id, settings, link, path, trainable, n_classes)


def trial_trainable(spec: JobSpec, path: Path, index: DatasetIndex | None) -> Any:
    """The trials' Tune trainable with its resources: one process with `resources`, or, with
    `resources.workers` > 1, a process holding a sliver of a CPU that runs a Ray Train group
    whose placement group holds the workers' resources (`workers.tune_adapter.run_group`), its
    latest checkpoint kept under the job's run folder (`.groups`), which every node reaches."""
    need = spec.resources
    if need.workers == 1:
        return tune.with_resources(tune.with_parameters(run_tune_trial, index=index),
                                   {"cpu": need.cpu, "gpu": need.gpu})
    group = GroupSize(need.workers, need.cpu, need.gpu, str(path / GROUPS_FOLDER),
                      spec.max_failures)
    return tune.with_resources(tune.with_parameters(run_tune_trial, index=index, group=group),
                               {"cpu": TRIAL_SHARE})


def _quiet_and_parallel(spec: JobSpec) -> None:
    # Tune launches one pending trial at a time for non-random searchers unless told otherwise.
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(spec.max_concurrent_trials)
    # Keeping only the best checkpoint makes Tune snapshot its state after every epoch's
    # checkpoint (so a restore seldom points at a deleted one: heal_checkpoints mends the rest);
    # that is wanted, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the live view is ours; verbose=0 is quiet
    # Tune turns Ctrl-C into a normal return, which would publish a half-run search as the job's
    # result; let it interrupt instead (the killed-driver path: trials resume with the job).
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Only the JSON logger (result.json, what Ray's own ExperimentAnalysis reads): the CSV one
    # repeats it, and TensorBoard's writer threads could deadlock the driver's exit after a
    # Ctrl-C (seen: `automl run` hanging in tensorboardX's atexit join); nothing reads either.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # A deployment-aware trial's first result is its costs, which has no validation metric yet.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def _fit(
    spec: JobSpec, job_id: str, settings: Settings, link: StudyLink, path: Path, trainable: Any,
    n_classes: int,
) -> tune.ResultGrid:
    restorable = tune.Tuner.can_restore(str(path))
    saved = tune.ExperimentAnalysis(str(path)).trials if restorable else []
    heal_checkpoints(saved)
    orphans = link.mark_orphans({t.trial_id for t in saved})
    if orphans:
        log.warning("trials %s were asked after Ray last saved its state: they run again",
                    ", ".join(map(str, orphans)))
    if restorable:
        log.warning("resuming job %s from %s", job_id, path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True)
        return tuner.fit()
    # all of them, unless Ray's state is gone (a driver killed before Ray first saved it, or a
    # runner on another machine taking the job over): a fresh Tune run asks only the rest (the
    # searcher counts the budget in the study)
    counts = retry(lambda: count_trials(link.study.get_trials(deepcopy=False)),
                   what="count trials")
    if counts.finished >= spec.budget.n_trials:
        raise JobError(
            f"job {job_id} has run all {spec.budget.n_trials} trials, but its Ray run folder "
            f"(AUTOML_RUNS/{job_id}) is gone, and the checkpoints with it; run the job again "
            "under a new id"
        )
    metric, mode = spec.objective.metric, spec.objective.mode
    search, scheduler = bridge(link, metric, mode, trial_settings(spec, n_classes),
                               spec.budget.n_trials, spec.max_concurrent_trials)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=-1,  # as many as the searcher gives: it counts the budget
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=job_id,
            storage_path=str(settings.runs_path),
            verbose=0,
            stop=JobStopper(job_id, metric, spec.budget.target, spec.objective.maximize),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[JsonLoggerCallback(), retention_for(spec, link),
                       *tracking_callbacks(spec, settings, link),
                       *([GroupReaper(path / GROUPS_FOLDER)] if spec.resources.workers > 1
                         else [])],
        ),
    )
    return tuner.fit()


def trial_settings(spec: JobSpec, n_classes: int) -> dict[str, Any]:
    """What every trial of the job is given beside what the space samples: the dataset and
    epochs, and in a deployment-aware job what to measure its costs for (`workers.model.costs`)."""
    fixed = spec.trial_settings()
    objective = spec.objective
    # a distill stage picks its student by the costs of the search's trials, and its card
    # compares the teacher's and the student's all (each backbone and size measured once a job)
    needed = sorted(set(objective.costs_needed) | (set(COSTS) if spec.distill else set()))
    if needed:
        fixed[COSTS_REQUEST] = {"costs": needed, "limits": dict(objective.limits),
                                "target": objective.latency.model_dump(),
                                "num_classes": n_classes}
    return fixed


def tracking_of(spec: JobSpec, settings: Settings) -> tuple[str, str] | None:
    """The MLflow store (URI, experiment) the job's runs go to: the spec's, else the service's."""
    uri = spec.tracking.mlflow or settings.mlflow_uri
    return None if uri is None else (uri, spec.tracking.experiment)


def tracking_callbacks(spec: JobSpec, settings: Settings, link: StudyLink) -> list[tune.Callback]:
    target = tracking_of(spec, settings)
    if target is None:
        return []
    from automl.tune.tracking.callback import MLflowTracking  # imports mlflow: only for tracked jobs

    return [MLflowTracking(*target, link)]


def retention_for(spec: JobSpec, link: StudyLink) -> Retention:
    """Keeps the best `keep_trials`, on a Pareto front every member of it, and with a distill
    stage the best trial that fits the student's limits."""
    keepers = Keepers(bool(spec.objective.front_costs), tuple(spec.distill_limits().items()),
                      spec.objective.maximize)
    return Retention(link, spec.checkpoints.keep_trials, spec.objective.metric,
                     spec.objective.maximize,
                     also_keep=keepers if keepers.front or keepers.student_limits else None)


def heal_checkpoints(trials: list[RayTrial]) -> None:
    """Ray keeps one checkpoint per trial: on each epoch's it deletes the one before, then saves
    its state. A driver stopped in between (a kill, Ctrl-C) leaves the state naming the deleted
    checkpoint, and that trial fails every resume. Its newest checkpoint, the one that replaced
    it, takes the deleted one's place: the trial resumes from where it really was."""
    for trial in trials:
        named = trial.checkpoint
        if trial.status in (RayTrial.TERMINATED, RayTrial.ERROR):
            continue  # never resumed; retention may have removed what Ray's state names
        if named is None or trial.path is None or Path(named.path).exists():
            continue
        newest = max(Path(trial.path).glob("checkpoint_*"), default=None)
        if newest is not None:
            log.warning("trial %s: its saved checkpoint is gone, resuming from %s",
                        trial.trial_id, newest.name)
            newest.rename(named.path)


class _ShortTrialError(logging.Filter):
    """Ray logs each failed trial with its whole traceback, ~80 lines mostly of Ray's own frames,
    which scroll the live view away. The last line says what went wrong; Ray keeps the rest in
    error.txt in the trial's folder, which the line names instead."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            what = last_line(error)
            record.msg = f"{record.getMessage()}: {what} (traceback: {self.folder}/<trial>/error.txt)"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


@contextlib.contextmanager
def short_trial_errors(folder: Path) -> Iterator[None]:
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    short = _ShortTrialError(folder)
    logger.addFilter(short)
    try:
        yield
    finally:
        logger.removeFilter(short)


@contextlib.contextmanager
def no_missing_metrics_warning() -> Iterator[None]:
    """Ray warns, with the trial's whole folder name, that it found no metrics for a trial that
    stopped before its first epoch (failed, or cut by the time limit): the live view and the
    job's error already say so."""
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to fetch metrics")

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
