"""The job queue's fencing: a write made under a lease lands only while that lease is current."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from storage.jobs import JobStore, Lease, LeaseLost
from storage.models import JobEvent


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    if request.param == "sqlite":
        return JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    return JobStore(request.getfixturevalue("pg_url"))


def test_a_fenced_write_lands_while_its_lease_is_current(store: JobStore) -> None:
    store.submit("job-1", "job", {})
    job = store.claim("runner-a")
    assert job is not None
    with store.fenced(Lease("job-1", job.attempts)) as session:
        session.add(JobEvent(job_id="job-1", kind="published"))
    assert [e.kind for e in store.events("job-1")][-1] == "published"


def test_a_fenced_write_under_a_lease_another_claim_replaced_writes_nothing(store: JobStore) -> None:
    store.submit("job-1", "job", {})
    first = store.claim("runner-a")
    assert first is not None
    store.restart("job-1", "runner-b", first.attempts, "taken over")  # the claim moves on
    with pytest.raises(LeaseLost), store.fenced(Lease("job-1", first.attempts)) as session:
        session.add(JobEvent(job_id="job-1", kind="published"))
        session.flush()
    assert "published" not in [e.kind for e in store.events("job-1")]


def test_a_fenced_write_after_the_job_ended_writes_nothing(store: JobStore) -> None:
    store.submit("job-1", "job", {})
    job = store.claim("runner-a")
    assert job is not None
    store.finish("job-1", "cancelled", attempts=job.attempts)
    with pytest.raises(LeaseLost), store.fenced(Lease("job-1", job.attempts)) as session:
        session.execute(select(JobEvent))


def test_a_released_job_is_claimed_at_once_and_not_as_a_restart(store: JobStore) -> None:
    store.submit("job-1", "job", {})
    first = store.claim("runner-a")
    assert first is not None
    assert store.release("job-1", first.attempts, "runner runner-a stopped")  # a drain
    again = store.claim("runner-b")
    assert again is not None and again.id == "job-1" and again.restarts == 0


def test_a_release_under_a_claim_another_runner_replaced_writes_nothing(store: JobStore) -> None:
    store.submit("job-1", "job", {})
    first = store.claim("runner-a")
    assert first is not None
    store.restart("job-1", "runner-b", first.attempts, "taken over")  # the claim moves on
    assert not store.release("job-1", first.attempts, "runner runner-a stopped")
    job = store.get("job-1")
    assert job.state == "running" and job.runner == "runner-b"
