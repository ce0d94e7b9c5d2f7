"""Experiment tracking in MLflow: the job is a parent run, each trial a run nested in it.

Ray Tune's own `MLflowLoggerCallback` drives the trial side (a run opened as a trial starts,
each result logged, the run ended as the trial ends, all from the driver, so workers need no
MLflow access). What it cannot know is added here:

- runs are found again, never made twice: the parent by the job id, a trial's run by its Optuna
  trial number, so a resumed job, a retried trial and a trial adopted after a driver restart go
  on in the run they had;
- a result is one `log_batch` call (Ray's logs metric by metric: ~20 round trips an epoch on
  Tune's event loop);
- a trial's run ends in the study's words (`automl.state`: complete, pruned at which epoch,
  over which limit, failed with what), with its costs among its metrics;
- the parent run carries the job's result: the best trial, its test scores, the model card and
  the confusion matrix.

Tracking never fails a running job: an MLflow call that fails mid-job is a warning and the
trials go on. A tracking store that cannot be reached at all stops the job before it starts.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.experiment import Trial as RayTrial
from sqlalchemy.engine import make_url

from automl.errors import JobError
from automl.search import keys
from automl.tune.bridge import StudyLink
from workers.model.costs import COSTS_REQUEST, COSTS_RESULT

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

JOB_TAG = "automl.job"  # on every run of a job: its id
TRIAL_TAG = "automl.trial"  # on a trial's run: its Optuna trial number
STATE_TAG = "automl.state"  # how it ended: complete, pruned, over_limit, failed (a job: its state)
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI
# what Ray adds to every result; not the trial's own measurements
_RAY_KEYS = frozenset({"timestamp", "pid", "done", "training_iteration", "time_this_iter_s",
                       "time_total_s", "time_since_restore", "iterations_since_restore",
                       "timesteps_total", "timesteps_since_restore", "episodes_total",
                       "experiment_tag", "checkpoint_dir_name", "should_checkpoint"})
_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "over_limit": "KILLED", "failed": "FAILED",
           "succeeded": "FINISHED", "cancelled": "KILLED"}


def artifact_root(uri: str) -> str | None:
    """Where a new experiment of a local store keeps its artifacts: beside the database, not in
    whatever folder the driver runs in (MLflow's default, `./mlruns`). A server decides itself."""
    if uri.startswith("sqlite:"):
        database = make_url(uri).database
        if database:
            return (Path(database).resolve().parent / "mlflow-artifacts").as_uri()
    return None


class JobRuns:
    """One job's runs in one MLflow experiment, found by their tags, each created once."""

    def __init__(self, uri: str, experiment: str, job_id: str) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.uri, self.job_id = uri, job_id
        self.client: MlflowClient = MlflowClient(tracking_uri=uri)
        self.parent: str | None = None
        self.trials: dict[int, str] = {}  # trial number -> run id
        self.ended: set[int] = set()  # trials whose run already says how they ended
        try:
            self.experiment_id = self._experiment(experiment)
            self.refresh()
        except (MlflowException, OSError) as error:
            raise JobError(
                f"cannot use the MLflow tracking store {uri}: {failure(uri, error)}; start the "
                "server, fix tracking.mlflow in the spec (or AUTOML_MLFLOW_URI), or leave it out"
            ) from None

    def refresh(self) -> None:
        """Read the job's runs again (another `JobRuns` of this job may have made some)."""
        self.parent, self.trials, self.ended = None, {}, set()
        for run in self._search(f"tags.`{JOB_TAG}` = '{self.job_id}'"):
            number = run.data.tags.get(TRIAL_TAG)
            if number is None:
                self.parent = run.info.run_id
            else:
                self.trials[int(number)] = run.info.run_id
                if STATE_TAG in run.data.tags and run.info.status != "RUNNING":
                    self.ended.add(int(number))

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifact_root(self.uri)))
        except MlflowException:  # another job created it just now
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _search(self, filter_string: str) -> Iterator[Any]:
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def start_job(self, params: dict[str, Any]) -> str:
        """The job's parent run: made with the job's settings as params, or reopened."""
        if self.parent is None:
            run = self.client.create_run(self.experiment_id, run_name=self.job_id,
                                         tags={JOB_TAG: self.job_id})
            self.parent = run.info.run_id
            self.log(self.parent, params=params)
        else:
            self.client.update_run(self.parent, status="RUNNING")
        return self.parent

    def trial_run(self, number: int, params: dict[str, Any]) -> str:
        """A trial's run, nested in the job's: made once with its config as params."""
        run_id = self.trials.get(number)
        if run_id is None:
            assert self.parent is not None
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{number}",
                tags={JOB_TAG: self.job_id, TRIAL_TAG: str(number), PARENT_TAG: self.parent})
            run_id = self.trials[number] = run.info.run_id
            self.log(run_id, params=params)
        return run_id

    def log(self, run_id: str, metrics: dict[str, Any] | None = None, step: int = 0,
            params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None) -> None:
        """One call for all of it; only finite numbers are metrics."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        scalars = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        flat = [Param(k, _text(v)) for k, v in _flatten(params or {})]
        for start in range(0, max(len(scalars), len(flat), 1), 100):  # MLflow's batch limits
            self.client.log_batch(
                run_id, metrics=scalars[start:start + 100], params=flat[start:start + 100],
                tags=[RunTag(k, _text(v)) for k, v in (tags or {}).items()] if start == 0 else [])

    def end_trial(self, frozen: FrozenTrial, error: str | None = None) -> None:
        """Say on its run how a finished trial ended, and end the run."""
        if frozen.number in self.ended or not frozen.state.is_finished():
            return
        run_id = self.trial_run(frozen.number, frozen.params)
        state, tags = _ending(frozen, error)
        metrics = {f"value_{i}": v for i, v in enumerate(frozen.values or [])}
        self.log(run_id, metrics=metrics, step=max(frozen.intermediate_values, default=0),
                 tags={STATE_TAG: state, **tags})
        self.client.set_terminated(run_id, _STATUS[state])
        self.ended.add(frozen.number)

    def log_artifacts(self, paths: list[Path]) -> None:
        """Files of the published model (its card, its confusion matrix) on the parent run."""
        assert self.parent is not None
        for path in paths:
            if path.exists():
                self.client.log_artifact(self.parent, str(path))

    def end_job(self, state: str, metrics: dict[str, Any], tags: dict[str, Any]) -> None:
        """The job's result on its parent run, which ends with it."""
        assert self.parent is not None
        self.log(self.parent, metrics=metrics, tags={STATE_TAG: state, **tags})
        self.client.set_terminated(self.parent, _STATUS.get(state, "FAILED"))


def _ending(frozen: FrozenTrial, error: str | None) -> tuple[str, dict[str, Any]]:
    if frozen.state == TrialState.COMPLETE:
        return "complete", {}
    if frozen.state == TrialState.PRUNED:
        over = frozen.user_attrs.get(keys.OVER_LIMIT)
        if over:
            return "over_limit", {"automl.over_limit": json.dumps(over)}
        return "pruned", {"automl.pruned_at_epoch": max(frozen.intermediate_values, default=0)}
    return "failed", {"automl.error": error or "ended with the job before its first epoch"}


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


_REMOTE = re.compile(r"^(https?|databricks)://", re.IGNORECASE)
# MLflow's words for a non-JSON answer, and urllib3's for one its retries gave up on
_HTTP_STATUS = re.compile(r"failed with error code (\d{3})|too many (\d{3}) error responses")


def failure(uri: str, error: BaseException) -> str:
    """What went wrong with the tracking store, for an error or a log line (which a job's error
    may quote). For a server: the HTTP status or the exception's type, never the message,
    which MLflow builds from the server's answer: a tracking URI may name any service the
    driver can reach, and its response must not come back to whoever named it."""
    if not _REMOTE.match(uri):
        return _first_line(error)  # a local store: the client's own words
    from mlflow.exceptions import MlflowException, RestException

    status = _HTTP_STATUS.search(str(error))
    if status is not None:
        return f"HTTP {status.group(1) or status.group(2)} (not an MLflow answer)"
    if isinstance(error, RestException):
        return f"HTTP {error.get_http_status_code()} ({error.error_code})"
    if isinstance(error, MlflowException) and "not in a valid JSON format" in str(error):
        return "HTTP 200 but not an MLflow answer (not JSON)"
    if isinstance(error, MlflowException) and "failed with exception" in str(error):
        return "no answer (the connection failed)"
    if isinstance(error, MlflowException):
        return f"{type(error).__name__} ({error.error_code})"
    return type(error).__name__


def _text(value: Any, limit: int = 6000) -> str:  # MLflow's longest param value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def last_error_line(trial: RayTrial) -> str | None:
    """The last line of a failed Ray trial's error, as the job's own errors give it."""
    # error.txt where the driver writes it first, else in the trial's storage (local or remote)
    local = trial.error_file
    text = (Path(local).read_text(errors="replace") if local and Path(local).exists()
            else trial.get_error())
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


def trial_errors(run_folder: Path) -> dict[str, str]:
    """The last error line of each failed trial of a job's Ray run, by Ray trial id (what a
    trial's run says it failed with, when Tune ended it before the study was told)."""
    from ray import tune

    if not tune.Tuner.can_restore(str(run_folder)):
        return {}
    trials = tune.ExperimentAnalysis(str(run_folder)).trials
    return {t.trial_id: line for t in trials
            if t.status == RayTrial.ERROR and (line := last_error_line(t)) is not None}


class MLflowTracking(MLflowLoggerCallback):
    """Ray Tune's MLflow callback, on the job's runs (`JobRuns`) and the job's study.

    Pickled with Ray's experiment (as the link is): a restored driver reconnects in `setup`.
    """

    def __init__(self, uri: str, experiment: str, link: StudyLink) -> None:
        super().__init__(tracking_uri=uri, experiment_name=experiment)
        self.link = link
        self.runs: JobRuns | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["runs"] = None
        return state

    def setup(self, *args: Any, **kwargs: Any) -> None:
        # ours first: it makes the experiment with its artifacts beside a local store
        self.runs = self._guarded(lambda: JobRuns(str(self.tracking_uri),
                                                  str(self.experiment_name),
                                                  self.link.study_name), "find the job's runs")
        super().setup(*args, **kwargs)
        if self.runs is not None and self.runs.parent is None:  # a driver that died very early
            runs = self.runs
            self._guarded(lambda: runs.start_job({}), "open the job's run")

    def _guarded(self, call: Any, what: str) -> Any:
        try:
            return call()
        except Exception as error:  # tracking is a view of the job, never a reason to fail it
            log.warning("MLflow at %s: could not %s: %s", self.tracking_uri, what,
                        failure(str(self.tracking_uri), error))
            return None

    def _run_of(self, trial: RayTrial) -> str | None:
        known = self.link.lookup(trial.trial_id)
        if known is None or self.runs is None:
            return None
        runs = self.runs
        config = {k: v for k, v in trial.config.items() if k != COSTS_REQUEST}
        run_id = runs.trials.get(known.number)
        if run_id is None:
            run_id = self._guarded(lambda: runs.trial_run(known.number, config),
                                   f"open trial {known.number}'s run")
        return run_id

    def log_trial_start(self, trial: RayTrial) -> None:
        self._run_of(trial)

    def log_trial_result(self, iteration: int, trial: RayTrial, result: dict[str, Any]) -> None:
        run_id = self._run_of(trial)
        if run_id is None or self.runs is None:
            return
        runs = self.runs
        metrics = {k: v for k, v in result.items() if k not in _RAY_KEYS and k != COSTS_RESULT}
        step = int(result.get("epoch") or 0)  # costs come before epoch 1
        self._guarded(lambda: runs.log(run_id, metrics=metrics, step=step),
                      f"log {trial.trial_id}'s result")

    def log_trial_end(self, trial: RayTrial, failed: bool = False) -> None:
        known = self.link.lookup(trial.trial_id)
        if known is None or self.runs is None:
            return
        runs = self.runs
        frozen = self.link.frozen(known)
        # one Tune has not told the study about yet is ended by the job's last pass
        self._guarded(lambda: runs.end_trial(frozen, last_error_line(trial) if failed else None),
                      f"end trial {known.number}'s run")


def finish_job_runs(
    runs: JobRuns, trials: list[FrozenTrial], run_folder: Path, state: str,
    metrics: dict[str, Any], tags: dict[str, Any],
) -> None:
    """The job's last word in MLflow: every finished trial's run ended (those Tune stopped at
    the end, or told FAIL after a lost worker, have not been yet), then the parent's. A failure
    here is a warning: the job's result stands without it."""
    try:
        runs.refresh()
        left = [t for t in trials if t.state.is_finished() and t.number not in runs.ended]
        # Ray's errors are read only when a failed trial's run has not said its own
        errors = trial_errors(run_folder) if any(t.state == TrialState.FAIL for t in left) else {}
        for frozen in left:
            runs.end_trial(frozen, errors.get(str(frozen.user_attrs.get(keys.RAY_TRIAL_ID))))
        runs.end_job(state, metrics, tags)
    except Exception as error:
        log.warning("MLflow at %s: could not record the end of job %s: %s", runs.uri,
                    runs.job_id, failure(runs.uri, error))
