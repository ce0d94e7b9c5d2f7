"""The job queue and job records: submit, claim, progress, finish, cancel.

Claiming is `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so runners never wait on each
other, plus a conditional UPDATE on the row's claim count whose row count decides any race: that
also makes SQLite, which ignores FOR UPDATE, hand each job to exactly one runner. A running job
whose runner stopped heartbeating is claimed again and resumed. A missing job or a refused
state change is a return value here; the job service words it for users.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage.counts import TrialCounts
from storage.db import migrate, sessions
from storage.models import FINISHED_STATES, JOB_STATES, Job, JobEvent, utcnow

STALE_AFTER = timedelta(seconds=60)  # a running job's heartbeat older than this: its driver is gone


class LeaseLost(RuntimeError):
    """A write refused because its driver no longer holds the job (another claim moved the
    row's `attempts` on, or the job ended)."""


@dataclass(frozen=True)
class Lease:
    """One driver's claim on its job: the row's `attempts` when the claim was made. Every claim
    moves `attempts` on, so a write made in a transaction that finds the row still at this value
    (and locks it, `JobStore.fenced`) comes from the job's one current driver: a fencing token."""

    job_id: str
    attempts: int


@dataclass(frozen=True)
class Beat:
    ours: bool  # False: another driver took the job over (ours was thought dead)
    cancel: bool


@dataclass(frozen=True)
class Progress:
    counts: TrialCounts
    best_trial: int | None
    best_value: float | None
    study_id: int | None = None

    def columns(self) -> dict[str, Any]:
        """The job row's columns this progress sets."""
        return {"n_running": self.counts.running, "n_paused": self.counts.paused,
                "n_complete": self.counts.complete,
                "n_pruned": self.counts.pruned, "n_failed": self.counts.failed,
                "best_trial": self.best_trial, "best_value": self.best_value,
                "study_id": self.study_id}


class JobStore:
    def __init__(self, url: str, *, connect_seconds: float = 30.0) -> None:
        migrate(url, retry_seconds=connect_seconds)
        self._sessions: sessionmaker[Session] = sessions(url)

    def submit(self, job_id: str, name: str, spec: dict[str, Any], state: str = "queued") -> Job:
        with self._sessions.begin() as session:
            job = Job(
                id=job_id, name=name, spec=spec, state=state, attempts=0, restarts=0,
                cancel_requested=False, n_running=0, n_complete=0, n_pruned=0, n_failed=0, n_paused=0,
            )
            if state == "running":
                job.started_at = job.heartbeat_at = utcnow()
            session.add(job)
            session.add(JobEvent(job_id=job_id, kind="submitted", message=state))
        return job

    def find(self, job_id: str) -> Job | None:
        with self._sessions() as session:
            return session.get(Job, job_id)

    def get(self, job_id: str) -> Job:
        """A job that must exist (the caller created or claimed it)."""
        job = self.find(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def list_jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        query = select(Job)
        counting = select(func.count()).select_from(Job)
        if state is not None:
            assert state in JOB_STATES, state
            query, counting = query.where(Job.state == state), counting.where(Job.state == state)
        with self._sessions() as session:
            total = session.scalar(counting) or 0
            jobs = session.scalars(
                query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
            ).all()
            return list(jobs), total

    def claim(self, runner: str, stale_after: timedelta = STALE_AFTER) -> Job | None:
        """Take the oldest queued job, or a running one whose driver stopped heartbeating (its
        runner's machine died): that one counts as a restart."""
        now = utcnow()
        with self._sessions.begin() as session:
            candidate = session.scalars(
                select(Job)
                .where(
                    (Job.state == "queued")
                    | ((Job.state == "running") & (Job.heartbeat_at < now - stale_after))
                )
                .order_by(Job.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if candidate is None:
                return None
            resumed = candidate.state == "running"  # read now: the UPDATE refreshes `candidate`
            # `attempts` is the row's version: only one claimant's UPDATE can match it
            taken = session.execute(
                update(Job)
                .where(Job.id == candidate.id, Job.attempts == candidate.attempts)
                .values(
                    state="running", runner=runner, heartbeat_at=now,
                    started_at=candidate.started_at or now, attempts=candidate.attempts + 1,
                    restarts=candidate.restarts + int(resumed),
                )
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            session.add(JobEvent(job_id=candidate.id, kind="resumed" if resumed else "claimed",
                                 message=runner))
        return self.get(candidate.id)

    def restart(self, job_id: str, runner: str, attempts: int, why: str) -> Job | None:
        """Take back a job whose driver died under this runner, unless another runner took it
        over meanwhile (its `attempts` moved on); counts as a restart."""
        with self._sessions.begin() as session:
            taken = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempts, Job.state == "running")
                .values(runner=runner, heartbeat_at=utcnow(), attempts=attempts + 1,
                        restarts=Job.restarts + 1)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            session.add(JobEvent(job_id=job_id, kind="restarted", message=why))
        return self.get(job_id)

    def release(self, job_id: str, attempts: int, why: str) -> bool:
        """Hand a running job back to the queue, for the next runner to claim at once: its
        runner is stopping and has stopped its driver. Not a fault, so not a restart. Only under
        claim `attempts` (a job another runner has taken over is left to it). Returns whether
        it was handed back."""
        with self._sessions.begin() as session:
            handed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempts == attempts, Job.state == "running")
                .values(state="queued", runner=None, heartbeat_at=None)
            ).rowcount == 1  # type: ignore[attr-defined]
            if handed:
                session.add(JobEvent(job_id=job_id, kind="released", message=why))
        return handed

    def requeue(self, job_id: str) -> tuple[Job | None, bool]:
        """A failed or cancelled job back in the queue (`automl resume`): a runner resumes it
        with the spec, study and Ray Tune state it had. Returns the job (None if unknown) and
        whether it was requeued (no: its state allows no resume)."""
        with self._sessions.begin() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state not in ("failed", "cancelled"):
                return job, False
            job.state, job.runner, job.heartbeat_at, job.finished_at = "queued", None, None, None
            job.cancel_requested, job.error, job.restarts = False, None, 0
            session.add(JobEvent(job_id=job_id, kind="requeued"))
        return self.get(job_id), True

    def discard(self, job_id: str) -> None:
        """Forget a job refused before it stored or started anything: there is nothing to keep."""
        with self._sessions.begin() as session:
            session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
            session.execute(delete(Job).where(Job.id == job_id))

    def resume(self, job_id: str, runner: str) -> Job | None:
        """Take a job back into the foreground (`automl run --job-id`), whatever became of it;
        None if there is no such job."""
        with self._sessions.begin() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                return None
            job.state, job.runner, job.heartbeat_at = "running", runner, utcnow()
            job.attempts, job.cancel_requested, job.error = job.attempts + 1, False, None
            job.restarts = 0
            job.started_at, job.finished_at = job.started_at or utcnow(), None
            session.add(JobEvent(job_id=job_id, kind="resumed", message=runner))
        return self.get(job_id)

    def heartbeat(self, job_id: str, attempts: int, progress: Progress | None = None) -> Beat:
        """Record liveness (and progress) for the driver of claim `attempts`, unless another
        driver has claimed the job since."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values.update(progress.columns())
        with self._sessions.begin() as session:
            beat = session.execute(
                update(Job).where(Job.id == job_id, Job.attempts == attempts, Job.state == "running")
                .values(**values)
            )
            cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
            return Beat(ours=beat.rowcount == 1, cancel=bool(cancel))  # type: ignore[attr-defined]

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[Session]:
        """A transaction that holds `lease`: the job row is checked and locked first (a claim
        waits for the commit), so what the caller writes in it lands only while `lease` is the
        job's current one. Raises `LeaseLost`, having written nothing, otherwise."""
        with self._sessions.begin() as session:
            held = session.execute(
                update(Job)
                .where(Job.id == lease.job_id, Job.attempts == lease.attempts,
                       Job.state == "running")
                .values(heartbeat_at=utcnow())
            )
            if held.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost(f"job {lease.job_id}: claim {lease.attempts} is no longer the "
                                "job's current one")
            yield session

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        progress: Progress | None = None,
        test_metrics: dict[str, Any] | None = None,
        attempts: int | None = None,
    ) -> bool:
        """The job's outcome; with `attempts`, only if no other driver has claimed the job
        since that claim. Returns whether it was written."""
        assert state in FINISHED_STATES
        values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "error": error,
                                  "n_running": 0, "n_paused": 0}
        if progress is not None:  # nothing runs or stays paused once a job has ended
            values.update({k: v for k, v in progress.columns().items()
                           if k not in ("n_running", "n_paused")})
        if test_metrics is not None:
            values["test_metrics"] = test_metrics
        query = update(Job).where(Job.id == job_id)
        if attempts is not None:
            query = query.where(Job.attempts == attempts)
        with self._sessions.begin() as session:
            written = session.execute(query.values(**values)).rowcount == 1  # type: ignore[attr-defined]
            if written:
                session.add(JobEvent(job_id=job_id, kind=state, message=error or ""))
        return written

    def request_cancel(self, job_id: str) -> tuple[Job | None, bool]:
        """Queued jobs are cancelled at once; running ones when their runner next looks. Returns
        the job (None if unknown) and whether the request was taken (no: it had finished)."""
        with self._sessions.begin() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state in FINISHED_STATES:
                return job, False
            job.cancel_requested = True
            if job.state == "queued":
                job.state, job.finished_at = "cancelled", utcnow()
            session.add(JobEvent(job_id=job_id, kind="cancel_requested"))
        return self.get(job_id), True

    def events(self, job_id: str) -> list[JobEvent]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
                ).all()
            )
