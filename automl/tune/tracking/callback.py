"""The Ray Tune callback that keeps a job's trial runs in MLflow, from the driver.

A `LoggerCallback` on Tune's documented hooks: a trial's run opened as it starts, each result
logged as one batch, the run ended in the study's words as the trial ends. Pickled with Ray's
experiment (as the study link is): a restored driver reconnects in `setup`.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.experiment import Trial as RayTrial
from ray.tune.logger import LoggerCallback

from automl.tune.bridge import StudyLink
from automl.tune.tracking.failure import failure
from automl.tune.tracking.runs import JobRuns
from automl.tune.trial_errors import last_error_line
from workers.model.target import COSTS_REQUEST, COSTS_RESULT

log = logging.getLogger(__name__)

# what Ray adds to every result; not the trial's own measurements
_RAY_KEYS = frozenset({"timestamp", "pid", "done", "training_iteration", "time_this_iter_s",
                       "time_total_s", "time_since_restore", "iterations_since_restore",
                       "timesteps_total", "timesteps_since_restore", "episodes_total",
                       "experiment_tag", "checkpoint_dir_name", "should_checkpoint"})


class MLflowTracking(LoggerCallback):
    """The job's trial runs (`JobRuns`), kept from Tune's trial events and the job's study."""

    def __init__(self, uri: str, experiment: str, link: StudyLink) -> None:
        super().__init__()
        self.tracking_uri, self.experiment_name = uri, experiment
        self.link = link
        self.runs: JobRuns | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["runs"] = None
        return state

    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        self.runs = self._guarded(lambda: JobRuns(self.tracking_uri, self.experiment_name,
                                                  self.link.study_name), "find the job's runs")
        if self.runs is not None and self.runs.parent is None:  # a driver that died very early
            runs = self.runs
            self._guarded(lambda: runs.start_job({}), "open the job's run")

    def _guarded(self, call: Any, what: str) -> Any:
        try:
            return call()
        except Exception as error:  # tracking is a view of the job, never a reason to fail it
            log.warning("MLflow at %s: could not %s: %s", self.tracking_uri, what,
                        failure(self.tracking_uri, error))
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
