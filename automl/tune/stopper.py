"""The job's stopper: the budget's end, the target, a cancel, or a job whose trials cannot run."""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper

from automl.tune.control import control_of

FAIL_FAST_TRIALS = 3


class JobStopper(Stopper):
    """Ends the whole experiment on the target value, the job's time limit, a cancel, or when
    its first `FAIL_FAST_TRIALS` trials all failed before any epoch (Katib's
    maxFailedTrialCount, kept for the case where no configuration can work: no network for
    the weights, a broken install; one that fails later is the configuration's doing).

    The cancel, the time used and whether this driver still holds the job come from the
    driver that runs the experiment now (`automl.tune.control`): Ray saves the stopper with
    the experiment, and a resumed job must not inherit an earlier driver's view of them.
    A driver that no longer holds its job stops here with `LeaseLost`, as by Ctrl-C (nothing
    ended, all resumable): stopping the trials would save them in Ray's state as finished.
    Failure counts are kept per process, like listeners.
    """

    _failed: dict[str, int | None] = {}  # trials failed before any epoch; None once one reported

    def __init__(self, job_id: str, metric: str, target: float | None, maximize: bool) -> None:
        self.job_id, self.metric, self.target, self.maximize = job_id, metric, target, maximize
        self.reason: str | None = None  # why this run ends

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Ray saves the stopper with its experiment state, `reason` too, and `Tuner.restore`
        brings it back: a resumed cancelled job would stop again at once. The reason is the
        run's; the resumed run starts without one."""
        self.__dict__.update(state)
        self.reason = None

    @classmethod
    def register(cls, job_id: str) -> None:
        cls._failed[job_id] = 0

    @classmethod
    def trial_failed(cls, job_id: str) -> None:
        failed = cls._failed.get(job_id)
        if failed is not None:
            cls._failed[job_id] = failed + 1

    @classmethod
    def gave_up(cls, job_id: str) -> bool:
        failed = cls._failed.get(job_id)
        return failed is not None and failed >= FAIL_FAST_TRIALS

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if "epoch" in result:  # an epoch got through: later failures are configurations' own
            self._failed[self.job_id] = None
        value = result.get(self.metric)
        if self.target is not None and value is not None and self._reaches(float(value)):
            self.reason = self.reason or "target"
        return False

    def _reaches(self, value: float) -> bool:
        assert self.target is not None
        return value >= self.target if self.maximize else value <= self.target

    def stop_all(self) -> bool:
        job = control_of(self.job_id)
        job.require_held(self.job_id, "go on running its trials")
        if self.reason is None and job.clock.out_of_time():
            self.reason = "time_limit"
        if self.reason is None and self.gave_up(self.job_id):
            self.reason = "failing"
        if self.reason is None and job.cancelled():
            self.reason = "cancelled"
        return self.reason is not None
