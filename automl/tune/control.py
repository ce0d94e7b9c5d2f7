"""What the driver running a job knows beside the study: whether the job was cancelled, whether
this driver still holds the job, and how long the job has run.

Ray pickles the searcher, the scheduler and the stopper with its experiment state, and
`Tuner.restore` brings back those of the driver that first started the job. So none of them
keeps any of this: they look it up here, per process and by job id (never pickled), and find
the driver that runs them now, as the live view's listeners are found.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from automl.search import keys
from storage.jobs import LeaseLost


@dataclass
class RunClock:
    """The job's running time, which `budget.time_limit` bounds: the time it ran under a
    driver, summed over its drivers. Time queued, cancelled or failed does not count; a
    driver that died without a word counts up to its last heartbeat, which saves the sum in
    the study (`keys.RUN_SECONDS`), where the next driver reads it back."""

    limit: float | None
    before: float = 0.0  # what the job's earlier drivers ran
    since: float = field(default_factory=time.monotonic)  # this driver's start

    @classmethod
    def of(cls, study: optuna.Study, limit: float | None) -> RunClock:
        return cls(limit, float(study.user_attrs.get(keys.RUN_SECONDS, 0.0)))

    def used(self) -> float:
        return self.before + time.monotonic() - self.since

    def out_of_time(self) -> bool:
        return self.limit is not None and self.used() >= self.limit


def _never() -> bool:
    return False


def _always() -> bool:
    return True


@dataclass
class JobControl:
    """`cancelled` and `held` are read on every step of Tune's loop: flags, not queries.
    `held`: whether this driver can still prove it holds the job (its last heartbeat is
    younger than the give-up time); past that, another runner may be taking the job over, and
    this driver must do nothing anyone can see."""

    cancelled: Callable[[], bool] = _never
    held: Callable[[], bool] = _always
    clock: RunClock = field(default_factory=lambda: RunClock(None))

    def require_held(self, job_id: str, doing: str) -> None:
        """Raises `LeaseLost` (Tune ends as by Ctrl-C: its state and the study stay resumable)
        unless this driver still holds the job."""
        if not self.held():
            raise LeaseLost(f"job {job_id}: did not {doing}: this driver no longer holds the job "
                            "(no heartbeat written within the give-up time)")


_CONTROLS: dict[str, JobControl] = {}


def register(job_id: str, control: JobControl) -> None:
    _CONTROLS[job_id] = control


def unregister(job_id: str) -> None:
    _CONTROLS.pop(job_id, None)


def control_of(job_id: str) -> JobControl:
    """The job's control in this process; a job run with none is never cancelled, always
    held and has no time limit (a bridge driven on its own, as tests do)."""
    return _CONTROLS.get(job_id) or JobControl()


def registered(job_id: str) -> JobControl | None:
    return _CONTROLS.get(job_id)
