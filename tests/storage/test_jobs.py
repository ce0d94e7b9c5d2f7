"""The job queue (storage/jobs.py): claims, and their fencing (a write made under a lease lands
only while that lease is current)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from storage.db import engine_for
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


def test_claimers_racing_on_postgresql_never_claim_the_same_job(pg_url: str) -> None:
    """Runners claim at the same moment, each in its own transaction and connection: every job
    goes to exactly one of them, and none is left behind."""
    store = JobStore(pg_url)
    for i in range(24):
        store.submit(f"job-{i:02d}", "job", {})
    start = threading.Barrier(6)

    def runner(name: str) -> list[str]:
        claimed = []
        start.wait()
        while (job := store.claim(name)) is not None:
            claimed.append(job.id)
        return claimed

    with ThreadPoolExecutor(6) as pool:
        claims = list(pool.map(runner, [f"runner-{i}" for i in range(6)]))
    every = [job for claimed in claims for job in claimed]
    assert sorted(every) == [f"job-{i:02d}" for i in range(24)]  # each once
    assert sum(1 for claimed in claims if claimed) > 1  # they did race
    assert {store.get(job).attempts for job in every} == {1}


def test_a_claim_skips_the_job_another_transaction_holds_instead_of_waiting(pg_url: str) -> None:
    store = JobStore(pg_url)
    store.submit("held", "job", {})
    store.submit("free", "job", {})
    claims: list[Any] = []
    with engine_for(pg_url).connect() as other, other.begin():
        other.execute(text("SELECT id FROM automl_jobs WHERE id = 'held' FOR UPDATE"))
        claiming = threading.Thread(target=lambda: claims.append(store.claim("runner-a")))
        claiming.start()
        claiming.join(timeout=60)  # a claim that waited for the lock would come back only now
        assert claims, "the claim waited for the row another transaction holds"
    assert claims[0] is not None and claims[0].id == "free"
    assert store.get("held").state == "queued"
