"""One job's runs in one MLflow experiment: the job a parent run, each trial a run nested in it.

Runs are found again, never made twice: the parent by the job id, a trial's run by its Optuna
trial number, so a resumed job, a retried trial and a trial adopted after a driver restart go on
in the run they had. A result is one `log_batch` call (Ray's own MLflow callback logs metric by
metric: ~20 round trips an epoch on Tune's event loop).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from automl.errors import JobError
from automl.search import keys
from automl.tune.tracking.failure import failure
from automl.tune.trial_errors import trial_errors

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

JOB_TAG = "automl.job"  # on every run of a job: its id
TRIAL_TAG = "automl.trial"  # on a trial's run: its Optuna trial number
STATE_TAG = "automl.state"  # how it ended: complete, pruned, over_limit, failed (a job: its state)
PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI
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

    def __init__(self, uri: str, experiment: str, job_id: str,
                 parent_job: str | None = None) -> None:
        """`parent_job`: the job this one is a stage of (its distillation): its run nests in
        that job's."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.uri, self.job_id, self.parent_job = uri, job_id, parent_job
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
            tags = {JOB_TAG: self.job_id}
            above = None if self.parent_job is None else next(
                (r.info.run_id for r in self._search(f"tags.`{JOB_TAG}` = '{self.parent_job}'")
                 if TRIAL_TAG not in r.data.tags), None)
            if above is not None:
                tags[PARENT_TAG] = above
            run = self.client.create_run(self.experiment_id, run_name=self.job_id, tags=tags)
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


def _text(value: Any, limit: int = 6000) -> str:  # MLflow's longest param value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


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
