"""Running a stored job: the job row follows the search (heartbeat, progress, cancel, outcome).

Used by `automl run` (a job row created in the foreground) and by the runner's per-job process.
A heartbeat thread writes trial counts and the best value every few seconds from the Optuna
storage (cheap counting queries, not a scan of every trial) and reads the cancel flag back.

The heartbeat is also how a driver learns that it may no longer own its job. Another runner
takes over a job whose heartbeat is older than `AUTOML_STALE_AFTER` (60 s); so a driver whose
beats keep failing, or do not return, stops its own job well before that, counted from its last
written beat (as Ctrl-C would: trials stop, Ray Tune's state and the study stay as they are,
nothing is finished or published), and so does a driver whose job another runner has claimed.
The runner that takes the job over resumes it. The driver does not count on the interrupt alone
(a signal handler can be missing, or the interrupt land where it is caught): past that give-up
time every step of the job checks the hold (`held`, `automl.tune.control`) and refuses, and the
driver writes nothing, even when its search had finished. A driver that lost its job without
noticing publishes nothing either: the publication's transaction checks its claim (`Lease`,
fenced by `JobStore.fenced`), and a refused one ends the driver as a lost heartbeat does.

Each beat also saves the job's running time in the study (`automl.tune.control.RunClock`), so a
driver that dies without a word has its time counted up to its last beat.
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from automl.errors import PublishError
from automl.jobs.driver import run_job
from automl.jobs.incidents import error_line
from automl.jobs.outcome import JobOutcome
from automl.search import keys
from automl.search.job_ids import new_job_id
from automl.search.keys import TrialCounts
from automl.search.ranking import ranked_complete
from automl.search.spec import JobSpec, parse_spec
from automl.settings import Settings
from automl.tune.bridge import Events
from automl.tune.control import registered
from storage.jobs import Beat, JobStore, Lease, LeaseLost, Progress
from storage.optuna_storage import optuna_storage

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0
T = TypeVar("T")


class HeartbeatLost(RuntimeError):
    """The driver stopped its own job: it could not prove it still owns it."""


class HandedBack(RuntimeError):
    """A runner's driver stopped by its runner, which is stopping: the runner hands the job back
    to the queue."""


def read_progress(storage: optuna.storages.BaseStorage, job_id: str) -> Progress | None:
    """The study's counts and best trial, by counting queries (not a read of every trial)."""
    try:
        study_id = storage.get_study_id_from_name(job_id)
        counts = TrialCounts(**{name: storage.get_n_trials(study_id, state) for name, state in (
            ("running", TrialState.RUNNING), ("complete", TrialState.COMPLETE),
            ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))})
    except KeyError:  # not created yet, or deleted under the job
        return None
    best_trial, best_value = _best(storage, study_id)
    return Progress(counts, best_trial, best_value, study_id)


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


class _Heartbeat(threading.Thread):
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
                why = _first_line(error)
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
            log.warning("job %s: cannot read its progress (%s)", self.job_id, _first_line(error))
            progress = None
        beat = self.store.heartbeat(self.job_id, self.attempts, progress)
        job = registered(self.job_id)  # None before the driver has the study
        study_id = None if progress is None else progress.study_id
        if beat.ours and job is not None and study_id is not None:
            try:
                self.storage.set_study_user_attr(study_id, keys.RUN_SECONDS, job.clock.used())
            except Exception as error:  # counted at the next beat, or at the search's end
                log.warning("job %s: cannot record its running time (%s)", self.job_id,
                            _first_line(error))
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


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def resume_hint(job_id: str, job_file: str | None = None) -> str:
    """How the user resumes an interrupted job: the foreground command that ran it, or the
    route a runner's job is queued again by."""
    if job_file is not None:
        return f"resume it with `automl run {job_file} --job-id {job_id}`"
    return f"resume it with `automl resume {job_id}` (POST /jobs/{job_id}/resume)"


def start_foreground(store: JobStore, spec: JobSpec, job_id: str | None) -> tuple[str, bool, bool]:
    """The job row of `automl run`: a new job, or with `job_id` that job taken back into the
    foreground (created under that id if there is none). Returns the id, whether it was created,
    and whether the stored spec (which a resumed job keeps) differs from `spec`."""
    spec_json = spec.model_dump(mode="json")
    if job_id is None:
        job_id = new_job_id(spec.name)
    elif (resumed := store.resume(job_id, "foreground")) is not None:
        return job_id, False, resumed.spec != spec_json
    store.submit(job_id, spec.name, spec_json, state="running")
    return job_id, True, False


def give_up_seconds(settings: Settings) -> float:
    """A driver whose heartbeat keeps failing stops its job at half the stale window: well
    before another runner may take the job over, so two drivers never run one job."""
    return settings.stale_after / 2


def execute_job(
    job_id: str, settings: Settings, store: JobStore, events: Events | None = None,
    job_file: str | None = None, spec: JobSpec | None = None, hand_back: bool = False,
    **run_options: Any,
) -> JobOutcome:
    """Run a job whose row exists, the row following it. `spec`: the job's spec, when this
    process has it validated already (the foreground `automl run`); else the stored one is read
    and validated here, once. `hand_back`: the driver of a runner, for which an interrupt means
    that the runner is stopping: the row is left for the runner to hand the job back to the
    queue, not marked cancelled. A driver that cannot prove it still holds the job when it ends
    writes nothing (`HeartbeatLost`), however its search ended."""
    job = store.get(job_id)
    if spec is None or job.spec != spec.model_dump(mode="json"):
        spec = parse_spec(job.spec, f"job {job_id}")
    storage = optuna_storage(settings.storage_url)
    beat = _Heartbeat(store, storage, job_id, job.attempts, give_up_seconds(settings))
    beat.start()
    try:
        outcome = run_job(spec, job_id, settings, events=events, cancelled=beat.cancel.is_set,
                          held=beat.held, lease=Lease(job_id, job.attempts), **run_options)
    except LeaseLost as lost:  # this driver no longer holds the job: nothing was published
        beat.done.set()
        if not beat.held():
            raise beat.lost_error() from None
        raise HeartbeatLost(f"job {job_id}: the driver stopped the job: another runner has "
                            "taken the job over, so its publication was refused; the runner "
                            "that took it over resumes it") from lost
    except KeyboardInterrupt:
        beat.done.set()
        if not beat.held():
            raise beat.lost_error() from None
        if hand_back:
            raise HandedBack(f"job {job_id}: interrupted: its runner is stopping and hands it "
                             "back to the queue") from None
        store.finish(job_id, "cancelled", error=f"interrupted; {resume_hint(job_id, job_file)}",
                     progress=read_progress(storage, job_id), attempts=job.attempts)
        raise
    except BaseException as error:
        beat.done.set()
        if not beat.held():  # the row is another driver's now, or unreachable
            raise beat.lost_error() from error
        message = error_line(error, job_id)  # one line: never a traceback, a path, a host
        if isinstance(error, PublishError):  # nothing was published: resuming publishes afresh
            message = f"{message}, then {resume_hint(job_id, job_file)}"
        store.finish(job_id, "failed", error=message, progress=read_progress(storage, job_id),
                     attempts=job.attempts)
        if isinstance(error, PublishError):
            raise PublishError(message) from None
        raise
    beat.done.set()
    if not beat.held():  # the search ended, but another runner may be resuming the job now
        raise beat.lost_error()
    store.finish(
        job_id,
        outcome.state,
        error=outcome.error,
        progress=read_progress(storage, job_id),
        test_metrics=outcome.test_metrics or None,
        attempts=job.attempts,
    )
    return outcome


def main() -> None:
    """`python -m automl.jobs.stored JOB`: the process a runner starts for each job it claims."""
    import sys

    from automl.settings import quiet_optuna

    quiet_optuna()
    # how both the heartbeat and the runner stop this driver; a runner started in the
    # background by a shell (`automl runner &`) passes SIGINT on ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    (job_id,) = sys.argv[1:]
    settings = Settings()
    try:
        outcome = execute_job(job_id, settings, JobStore(settings.storage_url), hand_back=True,
                              dataset_roots=settings.dataset_roots)
    except (HeartbeatLost, HandedBack) as error:
        print(error, file=sys.stderr)
        sys.exit(75)  # EX_TEMPFAIL: the job is resumed, not failed
    print(f"job {job_id} {outcome.state}: {outcome.error or ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
