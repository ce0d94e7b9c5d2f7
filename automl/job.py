"""Running one search job: a Ray Tune experiment coordinated by the job's Optuna study.

The study is named after the job id, so `optuna-dashboard <storage URL>` and the `optuna` CLI see
it while it runs. When the budget is spent the best trial (by validation) is scored once on the
test split (by the driver itself, unless the trials had GPUs the driver lacks), and its checkpoint
and reports are published as Optuna artifacts of the study. Running a job whose Ray experiment
already exists resumes it (`Tuner.restore` + the study in the database): a driver restart loses
no trial.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from optuna_dashboard import save_note
from ray import tune
from ray.tune.experiment import Trial as RayTrial

from automl.bridge import (
    FAIL_FAST_TRIALS,
    LISTENERS,
    RAY_TRIAL_ID,
    Events,
    JobStopper,
    StudyLink,
    best_of,
    bridge,
)
from automl.publish import BEST_TRIAL_ATTR, publish
from automl.report import write_confusion_png, write_model_card
from automl.settings import Settings
from automl.spec import JobSpec
from automl.strategy import Strategy, portfolio_for
from storage.artifacts import artifact_store
from storage.optuna_storage import optuna_storage, retry
from workers.config import DataConfig
from workers.datasets import DatasetError, load_index
from workers.decoded_cache import verify_once
from workers.model import hub_unreachable, uncached_hub_weights
from workers.tune_adapter import (
    can_evaluate_here,
    copy_checkpoint,
    evaluate_on_split,
    run_tune_trial,
)

log = logging.getLogger(__name__)
SPEC_ATTR = "spec"
STARTED_ATTR = "started_at"
TEST_METRICS_ATTR = "test_metrics"


class JobError(RuntimeError):
    """The job cannot run as asked (e.g. more GPUs per trial than the cluster has)."""


@dataclass
class JobOutcome:
    job_id: str
    state: str  # succeeded, failed, cancelled
    counts: dict[str, int]
    best_trial: int | None = None
    best_value: float | None = None
    test_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: ray_start, database, ...


def strategy_for(spec: JobSpec, n_images: int) -> Strategy:
    """The job's strategy; its warm-start portfolio is the one for a dataset of `n_images`."""
    s = spec.strategy
    return Strategy(
        space=spec.search_space(),
        direction="maximize" if spec.objective.maximize else "minimize",
        sampler=s.sampler,
        pruner=s.pruner,
        seed=s.seed,
        warm_start=s.warm_start,
        sampler_options=dict(s.sampler_options),
        pruner_options=dict(s.pruner_options),
        portfolio=portfolio_for(n_images),
    )


def ensure_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def check_dataset(spec: JobSpec, roots: tuple[Path, ...] = ()) -> int:
    """Index and verify the dataset once, on the driver, before anything is stored or started;
    returns its number of images. With `roots` (a service's dataset roots), every image must
    lie under one of them once symlinks are resolved: a folder under a root may still link
    anywhere."""
    try:
        index = load_index(DataConfig(
            source=spec.dataset.source,
            val_fraction=spec.dataset.val_fraction,
            test_fraction=spec.dataset.test_fraction,
            split_seed=spec.dataset.split_seed,
            image_column=spec.dataset.image_column,
            label_column=spec.dataset.label_column,
        ))
        if roots:
            outside = sum(1 for p in index.files
                          if not any(p.resolve().is_relative_to(root) for root in roots))
            if outside:
                raise DatasetError(
                    f"{outside} of its images resolve outside the dataset roots "
                    f"({':'.join(map(str, roots))}) through symlinks; this service reads only "
                    "under them"
                )
        verify_once(index.images)  # skipped for files verified or decoded on this machine
    except DatasetError as error:
        raise JobError(f"dataset: {error}") from error
    return len(index)


def check_pretrained_weights(spec: JobSpec) -> None:
    """Refuse a job whose trials would all fail to fetch their pretrained weights.

    Checked on the driver, which shares the workers' network in the deployments this project
    ships; a worker-only outage is still caught by the trials (fail fast, `_hint`).
    """
    space = spec.search_space()
    if True not in space.pretrained():
        return
    missing = uncached_hub_weights(space.backbones())
    if not missing:
        return
    why = hub_unreachable()
    if why is None:
        return
    from huggingface_hub import constants

    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise JobError(
        f"pretrained weights cannot be fetched: {why}, and {len(missing)} of the space's "
        f"backbones ({', '.join(missing[:3])}{more}) are not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE}; give the machines network access or a filled cache "
        "(HF_HOME), or set space.pretrained: false or to a weights file"
    )


def check_resources(spec: JobSpec) -> None:
    """Refuse a trial size no node can ever host, instead of waiting forever for it."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need = spec.resources
    if not any(n.get("CPU", 0) >= need.cpu and n.get("GPU", 0) >= need.gpu for n in nodes):
        biggest_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        biggest_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        raise JobError(
            f"each trial asks for {need.cpu:g} CPU and {need.gpu:g} GPU, but the largest Ray node "
            f"has {biggest_cpu:g} CPU and {biggest_gpu:g} GPU; lower `resources` in the job spec "
            "or point --ray-address at a cluster that has them"
        )


def run_job(
    spec: JobSpec,
    job_id: str,
    settings: Settings,
    *,
    events: Events | None = None,
    cancelled: Callable[[], bool] | None = None,
    connect_seconds: float = 60.0,
    dataset_roots: tuple[Path, ...] = (),
) -> JobOutcome:
    started = time.monotonic()
    # before anything is stored: an impossible job leaves no trace
    n_images = check_dataset(spec, dataset_roots)
    check_pretrained_weights(spec)
    ray_started = time.monotonic()
    ensure_ray(settings.ray_address)
    timings = {"ray_start": time.monotonic() - ray_started}
    check_resources(spec)
    storage = optuna_storage(settings.storage_url, retry_seconds=connect_seconds)
    strategy = strategy_for(spec, n_images)
    study = retry(
        lambda: strategy.create_study(
            storage,
            job_id,
            {SPEC_ATTR: spec.model_dump(mode="json"), STARTED_ATTR: time.time()},
        ),
        what=f"create study {job_id}",
        seconds=connect_seconds,
    )
    if events is not None:
        LISTENERS[job_id] = events
        replay_history(study, events)
    link = StudyLink(settings.storage_url, job_id, strategy)
    link.attach(storage, study)
    try:
        with no_missing_metrics_warning():
            grid = _tune(spec, job_id, settings, link, cancelled)
            timings["database"] = link.db_seconds
            counts = finish_leftovers(study, spec.objective.maximize, events)
            if cancelled is not None and cancelled():
                return JobOutcome(job_id, "cancelled", counts, elapsed=time.monotonic() - started,
                                  timings=timings)
            publishing = time.monotonic()
            outcome = _publish_best(spec, job_id, settings, storage, study, grid, counts)
            timings["publish"] = time.monotonic() - publishing
    finally:
        LISTENERS.pop(job_id, None)
    outcome.elapsed = time.monotonic() - started
    outcome.timings = timings
    return outcome


def _tune(
    spec: JobSpec,
    job_id: str,
    settings: Settings,
    link: StudyLink,
    cancelled: Callable[[], bool] | None,
) -> tune.ResultGrid:
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
    trainable = tune.with_resources(
        run_tune_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    )
    path = settings.runs_path / job_id
    JobStopper.register(job_id, cancelled)
    with short_trial_errors(path):
        return _fit(spec, job_id, settings, link, path, trainable)


def _fit(
    spec: JobSpec, job_id: str, settings: Settings, link: StudyLink, path: Path, trainable: Any
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
    # runner on another machine taking the job over): a fresh Tune run asks only the rest
    counts = retry(lambda: trial_counts(link.study), what="count trials")
    left = spec.budget.n_trials - counts["complete"] - counts["pruned"] - counts["fail"]
    if left <= 0:
        raise JobError(
            f"job {job_id} has run all {spec.budget.n_trials} trials, but its Ray run folder "
            f"{path} is gone, and the checkpoints with it; run the job again under a new id"
        )
    metric, mode = spec.objective.metric, spec.objective.mode
    searcher, scheduler = bridge(link, metric, mode, spec.trial_settings())
    started_at = float(link.study.user_attrs.get(STARTED_ATTR, time.time()))
    deadline = None if spec.budget.time_limit is None else started_at + spec.budget.time_limit
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=left,
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=job_id,
            storage_path=str(settings.runs_path),
            verbose=0,
            stop=JobStopper(job_id, metric, spec.budget.target, spec.objective.maximize, deadline),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        ),
    )
    return tuner.fit()


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
            lines = [line for line in str(error).splitlines() if line.strip()]
            what = lines[-1].strip() if lines else type(error).__name__
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


def heal_checkpoints(trials: list[RayTrial]) -> None:
    """Ray keeps one checkpoint per trial: on each epoch's it deletes the one before, then saves
    its state. A driver stopped in between (a kill, Ctrl-C) leaves the state naming the deleted
    checkpoint, and that trial fails every resume. Its newest checkpoint, the one that replaced
    it, takes the deleted one's place: the trial resumes from where it really was."""
    for trial in trials:
        named = trial.checkpoint
        if named is None or trial.path is None or Path(named.path).exists():
            continue
        newest = max(Path(trial.path).glob("checkpoint_*"), default=None)
        if newest is not None:
            log.warning("trial %s: its saved checkpoint is gone, resuming from %s",
                        trial.trial_id, newest.name)
            newest.rename(named.path)


def replay_history(study: optuna.Study, events: Events) -> None:
    """A resumed job's view starts where the job left off, not from nothing."""
    started = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=started):  # not the enqueued ones
        events.on_event("start", trial.number)
        for epoch, value in sorted(trial.intermediate_values.items()):
            events.on_event("report", trial.number, value, epoch)
        if trial.state.is_finished():
            events.on_event(trial.state.name.lower(), trial.number, trial.value)


def finish_leftovers(
    study: optuna.Study, maximize: bool, events: Events | None = None
) -> dict[str, int]:
    """Trials still RUNNING after Tune returned were stopped by the budget, the target or a cancel:
    those with results are told COMPLETE with their best epoch, the others FAIL. Returns the
    final counts by state."""
    running = retry(
        lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), what="list trials"
    )
    for frozen in running:
        value = best_of(frozen.intermediate_values, maximize)
        state = TrialState.FAIL if value is None else TrialState.COMPLETE

        def tell(number: int = frozen.number, state: TrialState = state,
                 value: float | None = value) -> None:
            study.tell(number, value, state=state, skip_if_finished=True)

        retry(tell, what="finish a trial")
        if events is not None:
            events.on_event(state.name.lower(), frozen.number, value)
    return trial_counts(study)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    counts = {"running": 0, "complete": 0, "pruned": 0, "fail": 0, "waiting": 0}
    for frozen in study.get_trials(deepcopy=False):
        counts[frozen.state.name.lower()] = counts.get(frozen.state.name.lower(), 0) + 1
    return counts


def _best_with_checkpoint(
    study: optuna.Study, results: list[tune.Result], maximize: bool
) -> tuple[optuna.trial.FrozenTrial | None, tune.Result | None]:
    """The best complete trial whose checkpoint this Tune run holds. Only a job whose Ray state
    was lost (its trials' checkpoints with it) can have a better trial without one."""
    by_ray_id = {(r.metrics or {}).get("trial_id"): r for r in results if r.best_checkpoints}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: float(t.value or 0.0), reverse=maximize):
        result = by_ray_id.get(trial.user_attrs.get(RAY_TRIAL_ID))
        if result is not None:
            if trial.number != study.best_trial.number:
                log.warning("trial %d scored best, but its checkpoint went with Ray's state: "
                            "publishing trial %d", study.best_trial.number, trial.number)
            return trial, result
    return None, None


def _score_on_test(checkpoint: tune.Checkpoint, spec: JobSpec) -> dict[str, Any]:
    """In the driver when it can (no cold worker to start), else on a node with the trial's GPU."""
    if can_evaluate_here(spec.resources.gpu):
        return evaluate_on_split(checkpoint, "test")
    evaluate = ray.remote(evaluate_on_split).options(
        num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu
    )
    return ray.get(evaluate.remote(checkpoint, "test"))


def _time_is_up(spec: JobSpec, study: optuna.Study) -> bool:
    limit = spec.budget.time_limit
    started = study.user_attrs.get(STARTED_ATTR)
    return limit is not None and started is not None and time.time() >= float(started) + limit


def _hint(errors: list[str]) -> str:
    """The fix for the failures that every trial of a job can share."""
    if any("huggingface" in e.lower() or "hf_hub" in e.lower() for e in errors):
        return ("; the workers could not fetch pretrained weights: give them network access or "
                "a filled Hugging Face cache (HF_HOME), or set space.pretrained: false")
    if any("out of memory" in e.lower() for e in errors):
        return ("; the trials ran out of GPU memory: narrow space.batch_size or space.img_size, "
                "or give each trial more of a GPU (resources.gpu)")
    return ""


def _publish_best(
    spec: JobSpec,
    job_id: str,
    settings: Settings,
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    grid: tune.ResultGrid,
    counts: dict[str, int],
) -> JobOutcome:
    results = [grid[i] for i in range(len(grid))]
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        errors = list(dict.fromkeys(str(r.error).strip().splitlines()[-1]
                                    for r in results if r.error))[:3]
        detail = f"; first errors: {' | '.join(errors)}" if errors else ""
        if JobStopper.gave_up(job_id):
            detail = (f"; stopped after the first {FAIL_FAST_TRIALS} trials failed before an "
                      f"epoch{detail}")
        elif _time_is_up(spec, study):
            detail = (f"; the time limit ({spec.budget.time_limit:g} s) ran out before any trial "
                      f"finished an epoch: raise budget.time_limit{detail}")
        return JobOutcome(job_id, "failed", counts,
                          error=f"no trial completed{detail}{_hint(errors)}")
    best, result = _best_with_checkpoint(study, results, spec.objective.maximize)
    if best is None or result is None:
        return JobOutcome(job_id, "failed", counts, error="no complete trial left a checkpoint")
    checkpoint = result.get_best_checkpoint(spec.objective.metric, spec.objective.mode)
    assert checkpoint is not None
    test = _score_on_test(checkpoint, spec)
    classes = test.pop("classes")
    with tempfile.TemporaryDirectory(prefix="automl-publish-") as tmp:
        folder = copy_checkpoint(checkpoint, Path(tmp))
        (folder / "test_metrics.json").write_text(json.dumps(test, indent=2, sort_keys=True))
        if "test_confusion_matrix" in test:
            write_confusion_png(test["test_confusion_matrix"], classes, folder / "confusion_matrix.png")
        write_model_card(
            folder / "model_card.md",
            job_id=job_id,
            trial_number=best.number,
            config=best.user_attrs.get("config", {}),
            classes=classes,
            val_value=float(best.value or 0.0),
            objective=spec.objective.metric,
            test_metrics=test,
            counts=counts,
        )
        store = artifact_store(settings.artifacts_path)
        retry(lambda: publish(study, store, folder), what="publish the best checkpoint")
        card = (folder / "model_card.md").read_text()
        retry(lambda: save_note(study, card), what="write the model card note")
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    retry(lambda: study.set_user_attr(TEST_METRICS_ATTR, scalars), what="record test metrics")
    retry(lambda: study.set_user_attr(BEST_TRIAL_ATTR, best.number), what="record the best trial")
    return JobOutcome(job_id, "succeeded", counts, best.number, best.value, scalars)
