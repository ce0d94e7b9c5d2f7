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


def test_paused_trials_are_counted_apart_in_the_job_row_and_its_views(
        store: JobStore, tmp_path: Path) -> None:
    """Freeze-thaw's paused trials (RUNNING in Optuna with the `paused` attr): the heartbeat's
    progress counts them apart from running ones, the row stores them (`n_paused`), `GET /jobs`
    and `automl jobs` show them, and a finished job has none."""
    import optuna
    from rich.console import Console

    from automl.cli.render import jobs_table, status_panel
    from automl.jobs.heartbeat import read_progress
    from automl.search import keys
    from automl.service.service import JobService
    from automl.service.views import JobPage
    from automl.settings import Settings

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="job-1", direction="maximize")
    for number in range(3):
        trial = study.ask()
        trial.report(0.1 * number, 1)
        if number:  # 1 and 2 paused after epoch 1, 0 trains on
            trial.set_user_attr(keys.PAUSED, 1)
    progress = read_progress(storage, "job-1")
    assert progress is not None
    assert (progress.counts.running, progress.counts.paused) == (1, 2)
    store.submit("job-1", "job", {"budget": {"n_trials": 6}, "objective": {"metric": "val"}})
    job = store.claim("runner-a")
    assert job is not None
    store.heartbeat("job-1", job.attempts, progress)
    row = store.get("job-1")
    assert (row.n_running, row.n_paused) == (1, 2)
    view = JobService(Settings(home=tmp_path), store=store, studies=storage).view(row)
    assert (view.trials.running, view.trials.paused) == (1, 2)  # what GET /jobs answers
    console = Console(width=200, record=True)
    console.print(status_panel(view))
    console.print(jobs_table(JobPage(jobs=[view], total=1, limit=50, offset=0)))
    text = console.export_text()
    assert "1 running, 2 paused" in text and "0/0/0 of 6, 2 paused" in text
    store.finish("job-1", "succeeded", progress=progress)
    assert store.get("job-1").n_paused == 0
