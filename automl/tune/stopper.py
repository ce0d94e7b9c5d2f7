"""The job's stopper: the budget's end, the target, a cancel, or a job whose trials cannot run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray.tune.stopper import Stopper

FAIL_FAST_TRIALS = 3


class JobStopper(Stopper):
    """Ends the whole experiment on the target value, the job's time limit, a cancel, or when
    its first `FAIL_FAST_TRIALS` trials all failed before any epoch (Katib's
    maxFailedTrialCount, kept for the case where no configuration can work: no network for
    the weights, a broken install; one that fails later is the configuration's doing).

    The time limit is a wall-clock deadline fixed when the job first started, so a resumed job
    does not get its budget back. Cancel checks (a database read for service jobs) and failure
    counts are kept per process, like listeners; cancels are polled at most once a second.
    """

    _cancel_checks: dict[str, Callable[[], bool]] = {}
    _failed: dict[str, int | None] = {}  # trials failed before any epoch; None once one reported

    def __init__(
        self, job_id: str, metric: str, target: float | None, maximize: bool,
        deadline: float | None,
    ) -> None:
        self.job_id, self.metric, self.target, self.maximize = job_id, metric, target, maximize
        self.deadline = deadline
        self.reason: str | None = None
        self._next_cancel_check = 0.0

    @classmethod
    def register(cls, job_id: str, cancelled: Callable[[], bool] | None) -> None:
        cls._failed[job_id] = 0
        if cancelled is None:
            cls._cancel_checks.pop(job_id, None)
        else:
            cls._cancel_checks[job_id] = cancelled

    @classmethod
    def cancel_requested(cls, job_id: str) -> bool:
        check = cls._cancel_checks.get(job_id)
        return check is not None and check()

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
        if self.reason is None and self.deadline is not None and time.time() >= self.deadline:
            self.reason = "time_limit"
        if self.reason is None and self.gave_up(self.job_id):
            self.reason = "failing"
        check = self._cancel_checks.get(self.job_id)
        if self.reason is None and check is not None and time.monotonic() >= self._next_cancel_check:
            self._next_cancel_check = time.monotonic() + 1.0
            if check():
                self.reason = "cancelled"
        return self.reason is not None
