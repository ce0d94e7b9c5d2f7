"""The driver's heartbeat: the job row follows the search, and the driver learns whether it
still owns its job.

A heartbeat thread writes trial counts and the best value every few seconds from the Optuna
storage (cheap counting queries, not a scan of every trial) and reads the cancel flag back.

Another runner takes over a job whose heartbeat is older than `AUTOML_STALE_AFTER` (60 s); so a
driver whose beats keep failing, or do not return, stops its own job well before that, counted
from its last written beat (as Ctrl-C would: trials stop, Ray Tune's state and the study stay as
they are, nothing is finished or published), and so does a driver whose job another runner has
claimed. The runner that takes the job over resumes it. The driver does not count on the
interrupt alone (a signal handler can be missing, or the interrupt land where it is caught):
past that give-up time every step of the job checks the hold (`Heartbeat.held`, passed down as
`held` to `automl.tune.control`) and refuses.

Each beat also saves the job's running time in the study (`automl.tune.control.RunClock`), so a
driver that dies without a word has its time counted up to its last beat.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import TypeVar

import optuna
from optuna.trial import TrialState

from automl.search import keys
from automl.search.keys import TrialCounts
from automl.search.ranking import ranked_complete
from automl.settings import Settings
from automl.tune.control import registered
from storage.jobs import Beat, JobStore, Progress
from workers.errors import first_line

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0
T = TypeVar("T")


class HeartbeatLost(RuntimeError):
    """The driver stopped its own job: it could not prove it still owns it."""


def read_progress(storage: optuna.storages.BaseStorage, job_id: str) -> Progress | None:
    """The study's counts and best trial, by counting queries (not a read of every trial)."""
    try:
        study_id = storage.get_study_id_from_name(job_id)
        counts = TrialCounts(**{name: storage.get_n_trials(study_id, state) for name, state in (
            ("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
            ("failed", TrialState.FAIL))}, **_running_and_paused(storage, study_id))
    except KeyError:  # not created yet, or deleted under the job
        return None
    best_trial, best_value = _best(storage, study_id)
    return Progress(counts, best_trial, best_value, study_id)


def _running_and_paused(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, int]:
    """RUNNING trials, those freeze-thaw paused apart: a read of the RUNNING ones only, which
    are few (the concurrency plus at most `FreezeThaw.max_paused` paused)."""
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    paused = sum(1 for t in running if keys.is_paused(t.user_attrs, t.state))
    return {"running": len(running) - paused, "paused": paused}


def _best(storage: optuna.storages.BaseStorage, study_id: int) -> tuple[int | None, float | None]:
    """The complete trial with the best validation metric (a Pareto front's first value)."""
    directions = storage.get_study_directions(study_id)
    if len(directions) == 1:
        try:
            best = storage.get_best_trial(study_id)
        except ValueError:  # nothing complete yet
            return None, None
        return best.number, best.value
    complete = [t for t in storage.get_all_trials(study_id, deepcopy=False,
                                                  states=(TrialState.COMPLETE,)) if t.values]
    if not complete:
        return None, None
    best = ranked_complete(complete, directions[0] == optuna.study.StudyDirection.MAXIMIZE)[0]
    return best.number, best.values[0]


class Heartbeat(threading.Thread):
    """The beat of one job's driver, in a daemon thread: `cancel` is set when the job is
    cancelled, `held()` says whether the driver may still act for the job."""

    def __init__(
        self, store: JobStore, storage: optuna.storages.BaseStorage, job_id: str, attempts: int,
        give_up_seconds: float,
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.storage, self.job_id, self.attempts = store, storage, job_id, attempts
        self.give_up_seconds = give_up_seconds
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.lost: str | None = None  # why the driver stopped its own job
        self.last_written = time.monotonic()  # the claim wrote one just before this process began

    def held(self) -> bool:
        """Whether the driver can still prove it holds its job: its last written beat is younger
        than the give-up time (another runner's stale clock runs from that beat too)."""
        return self.lost is None and time.monotonic() - self.last_written < self.give_up_seconds

    def lost_error(self) -> HeartbeatLost:
        why = self.lost or f"no heartbeat could be written for {self.give_up_seconds:.0f} s"
        return HeartbeatLost(f"job {self.job_id}: the driver stopped the job: {why}; the runner "
                             "that takes it over resumes it")

    def run(self) -> None:
        """One beat every HEARTBEAT_SECONDS. The give-up clock runs from the last beat written
        (another runner's stale clock runs from it too), and a beat that never returns (a
        locked row, a database that stopped answering) counts as failing: each one is waited
        for only until the give-up time."""
        why = "none was attempted in time"
        while True:
            left = self.give_up_seconds - (time.monotonic() - self.last_written)
            if self.done.wait(min(HEARTBEAT_SECONDS, max(left, 0.0))):
                return
            left = self.give_up_seconds - (time.monotonic() - self.last_written)
            if left <= 0:
                self._lose(f"no heartbeat could be written for {self.give_up_seconds:.0f} s "
                           f"({why})")
                return
            try:
                beat = _within(left, self._beat)
            except _NoAnswer:
                why = f"the last write did not return in {left:.0f} s"
                continue  # the clock ran out: the next pass stops the job
            except Exception as error:
                why = first_line(error)
                log.warning("job %s: heartbeat failed (%s); the driver stops the job after "
                            "%.0f s without one (%.0f s so far)", self.job_id, why,
                            self.give_up_seconds, time.monotonic() - self.last_written)
                continue
            self.last_written = time.monotonic()
            if self.done.is_set():
                return
            if not beat.ours:
                self._lose("another runner has taken the job over")
                return
            if beat.cancel:
                self.cancel.set()

    def _beat(self) -> Beat:
        try:
            progress = read_progress(self.storage, self.job_id)
        except Exception as error:  # progress is optional; liveness is not
            log.warning("job %s: cannot read its progress (%s)", self.job_id, first_line(error))
            progress = None
        beat = self.store.heartbeat(self.job_id, self.attempts, progress)
        job = registered(self.job_id)  # None before the driver has the study
        study_id = None if progress is None else progress.study_id
        if beat.ours and job is not None and study_id is not None:
            try:
                self.storage.set_study_user_attr(study_id, keys.RUN_SECONDS, job.clock.used())
            except Exception as error:  # counted at the next beat, or at the search's end
                log.warning("job %s: cannot record its running time (%s)", self.job_id,
                            first_line(error))
        return beat

    def _lose(self, why: str) -> None:
        if self.done.is_set():  # the job ended meanwhile: there is nothing left to stop
            return
        self.lost = why
        log.error("job %s: stopping: %s", self.job_id, why)
        _thread.interrupt_main()  # as Ctrl-C: Tune stops, its state stays resumable


class _NoAnswer(Exception):
    """A call that did not return in the time it was given."""


def _within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`, in a thread of its own so that waiting for it can end: `_NoAnswer` after
    `seconds`, the call left to finish (or hang) in its daemon thread. Not an executor: its
    worker threads are joined at exit, so one hung call would keep the process from ending."""
    result: Future[T] = Future()

    def work() -> None:
        try:
            result.set_result(call())
        except BaseException as error:
            result.set_exception(error)

    threading.Thread(target=work, name="heartbeat-write", daemon=True).start()
    if not wait([result], timeout=seconds).done:
        raise _NoAnswer
    return result.result()


def give_up_seconds(settings: Settings) -> float:
    """A driver whose heartbeat keeps failing stops its job at half the stale window: well
    before another runner may take the job over, so two drivers never run one job."""
    return settings.stale_after / 2
