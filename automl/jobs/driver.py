"""Running one search job: a Ray Tune experiment coordinated by the job's Optuna study.

The study is named after the job id, so `optuna-dashboard <storage URL>` and the `optuna` CLI see
it while it runs. When the budget is spent the best trial (by validation) is scored once on the
test split (by the driver itself, unless the trials had GPUs the driver lacks), and its checkpoint
and reports are published as Optuna artifacts of the study. Running a job whose Ray experiment
already exists resumes it: a driver restart loses no trial, and a resumed job runs what its
budget has left (trials and running time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from optuna.trial import TrialState

from automl.errors import JobError
from automl.jobs.distill import check_students, run_stage
from automl.jobs.incidents import error_line, user_message
from automl.jobs.local_ray import connect_local_ray
from automl.jobs.outcome import (
    JobOutcome,
    best_with_checkpoint,
    finish_leftovers,
    kept_checkpoint,
    score_front,
    score_on_test,
    why_nothing_completed,
)
from automl.jobs.preflight import (
    DatasetSize,
    check_dataset,
    check_limits,
    check_paths,
    check_pretrained_weights,
    check_resources,
    feasible_portfolio,
)
from automl.jobs.publish import publish_best
from automl.jobs.report import EVALUATION_FILES
from automl.search import keys
from automl.search.applicability import warm_start_off
from automl.search.dataset_name import dataset_name
from automl.search.keys import count_trials, state_name
from automl.search.spec import JobSpec
from automl.search.strategy import Strategy, portfolio_for
from automl.settings import Settings
from automl.tune.bridge import LISTENERS, Events, StudyLink
from automl.tune.control import JobControl, RunClock, register, unregister
from automl.tune.experiment import (
    no_missing_metrics_warning,
    retention_for,
    run_experiment,
    tracking_of,
)
from automl.tune.retention import folders_of
from storage.jobs import Lease, LeaseLost
from storage.optuna_storage import optuna_storage, retry
from workers.tune_adapter import remove_orphaned_trial_folders

if TYPE_CHECKING:
    from automl.tune.tracking.runs import JobRuns

log = logging.getLogger(__name__)


def strategy_for(spec: JobSpec, n_images: int, n_classes: int = 2) -> Strategy:
    """The job's strategy; its warm-start portfolio is the one for a dataset of `n_images`,
    without the members whose size alone breaks the job's limits, and none where the portfolio's
    knowledge does not apply to the job's space (`warm_start_off`: the sampler alone)."""
    if spec.strategy.warm_start and warm_start_off(spec.search_space()) is not None:
        return spec.strategy_object()
    return spec.strategy_object(feasible_portfolio(spec, portfolio_for(n_images), n_classes))


def study_attrs(spec: JobSpec) -> dict[str, Any]:
    """What a new study of the job is created with: its spec, when it started, and why it tries
    no portfolio though its spec asks for a warm start (where that is so)."""
    off = warm_start_off(spec.search_space()) if spec.strategy.warm_start else None
    return {keys.SPEC: spec.model_dump(mode="json"), keys.STARTED_AT: time.time(),
            **({keys.WARM_START_OFF: off} if off else {})}


def ensure_ray(address: str | None) -> None:
    """Connect to the job's Ray: the one at `address`, or a local one that ends with this
    process however it ends (`automl.jobs.local_ray`)."""
    if ray.is_initialized():
        return
    if address in (None, "local"):
        address = connect_local_ray()
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def run_job(
    spec: JobSpec,
    job_id: str,
    settings: Settings,
    *,
    events: Events | None = None,
    cancelled: Callable[[], bool] | None = None,
    held: Callable[[], bool] | None = None,
    connect_seconds: float = 60.0,
    dataset_roots: tuple[Path, ...] = (),
    lease: Lease | None = None,
    dataset: DatasetSize | None = None,
    stage_of: str | None = None,
) -> JobOutcome:
    """Run the job, or resume it. `cancelled`, `held`: flags read on every step of Tune's loop
    (not queries): whether the job was cancelled, and whether this driver still holds the job
    (`automl.tune.control`); one that does not stops with `LeaseLost` before it asks, reports,
    tells or publishes anything. `lease`: the claim of the job's row this driver runs under, if
    it has one: its publication lands only while that claim holds (else `LeaseLost`).
    `dataset`, `stage_of`: for a stage of job `stage_of` (its distillation), that job's checked
    dataset, and the job its MLflow runs nest under."""
    started = time.monotonic()
    # before anything is stored: an impossible job leaves no trace
    check_paths(spec, dataset_roots)
    if dataset is None:
        dataset = check_dataset(spec, dataset_roots)
    check_pretrained_weights(spec)
    check_limits(spec, dataset.classes)
    if spec.distill is not None:
        check_students(spec, dataset.classes)
    runs = job_runs(spec, settings, job_id, stage_of)  # an unusable tracking store stops here
    ray_started = time.monotonic()
    ensure_ray(settings.ray_address)
    timings = {"ray_start": time.monotonic() - ray_started}
    check_resources(spec)
    storage = optuna_storage(settings.storage_url, retry_seconds=connect_seconds)
    strategy = strategy_for(spec, dataset.images, dataset.classes)
    attrs = study_attrs(spec)
    if keys.WARM_START_OFF in attrs:
        log.info("job %s: warm start off: %s", job_id, attrs[keys.WARM_START_OFF])
    study = retry(
        lambda: strategy.create_study(storage, job_id, attrs),
        what=f"create study {job_id}",
        seconds=connect_seconds,
    )
    job = JobControl(clock=RunClock.of(study, spec.budget.time_limit))
    if cancelled is not None:
        job.cancelled = cancelled
    if held is not None:
        job.held = held
    if runs is not None:
        runs.start_job(spec.model_dump(mode="json", exclude={"tracking"}))
    if events is not None:
        LISTENERS[job_id] = events
        replay_history(study, events)
    link = StudyLink(settings.storage_url, job_id, strategy)
    link.attach(storage, study)
    register(job_id, job)
    try:
        with no_missing_metrics_warning():
            grid = run_experiment(spec, job_id, settings, link, dataset.classes, dataset.indexed)
            ran = job.clock.used()
            link.call(lambda: study.set_user_attr(keys.RUN_SECONDS, ran), "record the running time")
            timings["database"] = link.db_seconds
            if link.policy_calls:
                timings["freeze-thaw decisions"] = link.policy_seconds
                timings["freeze-thaw calls"] = float(link.policy_calls)
            counts = finish_leftovers(link, events)
            results = [grid[i] for i in range(len(grid))]
            publishing = time.monotonic()
            # what Tune ended and the leftovers, however the job ends (a cancel too)
            retention_for(spec, link).apply(folders_of(results))
            if job.cancelled():
                outcome = JobOutcome(job_id, "cancelled", counts, elapsed=time.monotonic() - started,
                                     timings=timings)
                track_end(runs, study, outcome, settings.runs_path / job_id, spec)
                return outcome
            best, result = best_with_checkpoint(study, results, spec.objective.maximize)
            if best is None or result is None:
                complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                error = (why_nothing_completed(spec, job_id, results) if not complete
                         else "no complete trial left a checkpoint")
                outcome = JobOutcome(job_id, "failed", counts, error=error)
            else:
                checkpoint = kept_checkpoint(result, spec)
                keep = None if runs is None else partial(track_model_card, runs)
                scores = score_on_test(checkpoint, spec, dataset.indexed)
                job.require_held(job_id, "publish the best trial")
                test = publish_best(study, settings, checkpoint, best, spec.objective.metric,
                                    scores, counts,
                                    dataset=dataset_name(spec.dataset.source, spec.dataset.name),
                                    lease=lease, also=keep)
                if spec.objective.front_costs:
                    front = score_front(study, results, spec, best.number, test, dataset.indexed)
                    retry(lambda: study.set_user_attr(keys.FRONT, front), what="record the front")
                outcome = JobOutcome(job_id, "succeeded", counts, best.number, best.values[0],
                                     test)
                if spec.distill is not None:
                    timings["publish"] = time.monotonic() - publishing
                    distilling = time.monotonic()
                    distill(spec, job_id, settings, study, dataset, outcome, lease=lease,
                            cancelled=cancelled, held=held, connect_seconds=connect_seconds)
                    timings["distill"] = time.monotonic() - distilling
            timings.setdefault("publish", time.monotonic() - publishing)
            track_end(runs, study, outcome, settings.runs_path / job_id, spec)
    finally:
        LISTENERS.pop(job_id, None)
        unregister(job_id)
        # a trial's scratch folder outlives a worker Ray killed (one that would not stop in
        # time for its actor to be reused): this machine's go now, other nodes' with their
        # next trial
        remove_orphaned_trial_folders()
    outcome.elapsed = time.monotonic() - started
    outcome.timings = timings
    return outcome


def distill(spec: JobSpec, job_id: str, settings: Settings, study: optuna.Study,
            dataset: DatasetSize, outcome: JobOutcome, **run_options: Any) -> None:
    """The distill stage after the search's result is published (`automl.jobs.distill`), and
    its deployable model (`automl.jobs.deployable`). A stage that fails leaves the search's
    result published and the job succeeded, the failure and how to retry it in its error; a
    cancelled stage cancels the job (resuming it runs the stage on)."""
    from automl.jobs.deployable import publish_deployable

    lease = run_options.get("lease")
    try:
        stage, student = run_stage(
            spec, job_id, settings, study, dataset.classes,
            dataset_name(spec.dataset.source, spec.dataset.name), run_job, dataset=dataset,
            **run_options)
        if stage.state == "succeeded":
            outcome.deployable = publish_deployable(spec, job_id, settings, study, stage,
                                                    student, dataset.indexed, lease)
            return
    except (LeaseLost, KeyboardInterrupt):
        raise
    except Exception as error:
        if user_message(error) is None:
            log.exception("job %s: the distill stage failed", job_id)
        outcome.error = (f"the distill stage failed: {error_line(error, job_id)}; the search's "
                         f"best model is published; retry the stage with `automl distill "
                         f"{job_id}`")
        return
    if stage.state == "cancelled":
        outcome.state = "cancelled"
    else:
        outcome.error = (f"the distill stage {stage.state}: {stage.error}; the search's best "
                         f"model is published; retry the stage with `automl distill {job_id}`")


def distill_job(job_id: str, settings: Settings, stored: dict[str, Any],
                changes: dict[str, Any], connect_seconds: float = 10.0) -> JobOutcome:
    """`automl distill JOB`: the distill stage of a succeeded job, run in the foreground with its
    stored spec's `distill` section updated by `changes` (a job that had none: `changes` is it)."""
    from automl.search.spec import parse_spec

    started = time.monotonic()
    section = {**(stored.get("distill") or {}), **changes}
    spec = parse_spec({**stored, "distill": section}, f"job {job_id} with its distill stage")
    check_paths(spec)
    dataset = check_dataset(spec)
    check_students(spec, dataset.classes)
    ensure_ray(settings.ray_address)
    storage = optuna_storage(settings.storage_url, retry_seconds=connect_seconds)
    study = optuna.load_study(study_name=job_id, storage=storage)
    best = study.user_attrs.get(keys.BEST_TRIAL)
    if best is None:
        raise JobError(f"job {job_id} has no published best model to teach with; distill a "
                       "job that succeeded (automl list)")
    trials = study.get_trials(deepcopy=False)
    counts = count_trials(trials)
    value = next((t.values[0] for t in trials if t.number == best and t.values), None)
    outcome = JobOutcome(job_id, "succeeded", counts, best, value,
                         dict(study.user_attrs.get(keys.TEST_METRICS, {})))
    distill(spec, job_id, settings, study, dataset, outcome, connect_seconds=connect_seconds)
    outcome.elapsed = time.monotonic() - started
    return outcome


def job_runs(spec: JobSpec, settings: Settings, job_id: str,
             stage_of: str | None = None) -> JobRuns | None:
    """The job's MLflow runs, when it is tracked (`automl.tune.tracking`)."""
    target = tracking_of(spec, settings)
    if target is None:
        return None
    from automl.tune.tracking.runs import JobRuns  # imports mlflow: only for tracked jobs

    return JobRuns(*target, job_id, parent_job=stage_of)


def track_model_card(runs: JobRuns, folder: Path) -> None:
    """The card, the confusion matrix and the evaluation (report, page, charts) in MLflow."""
    names = ["README.md", "confusion_matrix.png", *EVALUATION_FILES]
    try:
        runs.log_artifacts([folder / name for name in names if (folder / name).is_file()])
    except Exception as error:  # the job's result stands without its copy in MLflow
        log.warning("MLflow at %s: could not keep the model card: %s", runs.uri, error)


def track_end(runs: JobRuns | None, study: optuna.Study, outcome: JobOutcome,
              runs_folder: Path, spec: JobSpec) -> None:
    """The job's end in MLflow: its trials' runs ended, then the parent with the result."""
    if runs is None:
        return
    from automl.tune.tracking.runs import finish_job_runs

    counts = outcome.counts
    metrics: dict[str, Any] = {f"trials_{name}": getattr(counts, name)
                               for name in ("complete", "pruned", "failed")}
    if outcome.best_value is not None:
        metrics[f"best_{spec.objective.metric}"] = outcome.best_value
    metrics.update(outcome.test_metrics)
    tags: dict[str, Any] = {}
    if outcome.best_trial is not None:
        tags["automl.best_trial"] = outcome.best_trial
    if outcome.error:
        tags["automl.error"] = outcome.error
    trials = retry(lambda: study.get_trials(deepcopy=False), what="list trials")
    finish_job_runs(runs, trials, runs_folder, outcome.state, metrics, tags)


def replay_history(study: optuna.Study, events: Events) -> None:
    """A resumed job's view starts where the job left off, not from nothing."""
    started = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=started):  # not the enqueued ones
        events.on_event("start", trial.number)
        for epoch, value in sorted(trial.intermediate_values.items()):
            events.on_event("report", trial.number, value, epoch)
        if keys.is_paused(trial.user_attrs, trial.state):
            events.on_event(keys.PAUSED_STATE, trial.number)
        if trial.state.is_finished():
            events.on_event(state_name(trial.state), trial.number,
                            trial.values[0] if trial.values else None)
