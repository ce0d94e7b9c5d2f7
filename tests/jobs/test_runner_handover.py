"""A job handed from one runner to another under faults, with real processes: a driver whose
heartbeat fails, or that is cut off from the database, stops before another runner takes the
job; a cancelled job resumed, and a runner stopped with SIGTERM, hand it over at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from storage.jobs import JobStore
from tests.jobs.runner_support import (
    drivers,
    environment,
    epochs_by_trial,
    epochs_reported,
    is_alive,
    job_spec,
    submit,
)
from tests.support import AUTOML, assert_budget_met_once, load_study, proxy_to, wait_for

pytestmark = pytest.mark.slow

REFUSE_BEATS = """
CREATE FUNCTION refuse_beats() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'heartbeats refused by the test'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_beats BEFORE UPDATE ON automl_jobs FOR EACH ROW
WHEN (NEW.heartbeat_at IS DISTINCT FROM OLD.heartbeat_at) EXECUTE FUNCTION refuse_beats();
"""


@pytest.mark.usefixtures("local_ray")
def test_a_driver_whose_heartbeat_fails_stops_before_another_runner_may_take_over(
    pg_url: str, tmp_path: Path
) -> None:
    """Its heartbeat's writes fail (the rest of the database works): after AUTOML_STALE_AFTER
    (30 s here) another runner would take the job over, so the driver stops the job at half of
    that, well before, as Ctrl-C would,
    writing nothing. The runner that takes the job over then finishes it, each trial once.
    (A driver that carried on through failed heartbeats would run the job beside that one.)"""
    from sqlalchemy import create_engine, text

    stale_after = 30.0
    env = environment(tmp_path / "automl-data", pg_url, AUTOML_STALE_AFTER=str(stale_after))
    job_id = submit(env, tmp_path, job_spec("lost-beat", budget={"n_trials": 2, "max_epochs": 30},
                                            max_concurrent_trials=2))
    store = JobStore(pg_url)
    assert store.claim("first-runner") is not None
    driver = subprocess.Popen([sys.executable, "-m", "automl.jobs.process", job_id], env=env,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    engine = create_engine(pg_url)
    try:
        wait_for(lambda: epochs_reported(pg_url, job_id) >= 2, 240, "the trials to report")
        with engine.begin() as connection:
            connection.execute(text(REFUSE_BEATS))
        refused_at = time.monotonic()
        output = driver.communicate(timeout=120)[0]
        stopped_after = time.monotonic() - refused_at
    finally:
        driver.kill()
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER IF EXISTS refuse_beats ON automl_jobs"))
        engine.dispose()
    assert driver.returncode == 75, output
    assert stale_after / 2 - 5 < stopped_after < stale_after - 2, stopped_after
    assert "heartbeat failed (heartbeats refused by the test)" in output, output
    job = store.get(job_id)
    assert job.state == "running" and not job.error  # nothing written: the job is resumable
    study = load_study(pg_url, job_id)
    assert {t.state for t in study.trials} == {TrialState.RUNNING}  # nothing told either

    from datetime import timedelta

    taken = store.claim("second-runner", stale_after=timedelta(0))
    assert taken is not None and taken.id == job_id
    second = subprocess.run([sys.executable, "-m", "automl.jobs.process", job_id], env=env,
                            capture_output=True,
                            text=True, timeout=600)
    assert store.get(job_id).state == "succeeded", second.stdout + second.stderr
    study = load_study(pg_url, job_id)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == list(range(1, 31)) for t in study.trials)


@pytest.mark.usefixtures("local_ray")
def test_a_cancelled_job_resumed_through_a_runner_runs_the_rest_of_its_budget(
    pg_url: str, tmp_path: Path
) -> None:
    """Cancelled with a trial complete and the next mid-way, then `automl resume`d: the runner
    runs what the budget has left, not nothing (the job used to end "succeeded" at once, with
    the trials it had); exactly n_trials trials in all, none run twice."""
    env = environment(tmp_path / "automl-data", pg_url)
    job_id = submit(env, tmp_path, job_spec("cancel-resume", budget={"n_trials": 3, "max_epochs": 4}))
    store = JobStore(pg_url)
    runner = subprocess.Popen([AUTOML, "runner"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: sorted(epochs_by_trial(pg_url, job_id)) == [1, 4], 300,
                 "a complete trial and the next mid-way")
        store.request_cancel(job_id)  # what `automl cancel` and DELETE /jobs/{id} do
        wait_for(lambda: store.get(job_id).state == "cancelled", 120, "the cancel")
        cancelled = load_study(pg_url, job_id)
        assert [t.state.is_finished() for t in cancelled.trials] == [True, True]
        resumed = subprocess.run([AUTOML, "resume", job_id, "--storage", pg_url],
                                 env={**env, "AUTOML_API_URL": ""}, capture_output=True,
                                 text=True, timeout=60)
        assert resumed.returncode == 0 and "queued" in resumed.stdout, resumed.stderr
        wait_for(lambda: store.get(job_id).state in ("succeeded", "failed"), 300, "the resume")
    finally:
        runner.terminate()
        output = runner.communicate(timeout=90)[0]
    job = store.get(job_id)
    assert job.state == "succeeded", (job.error, output)
    study = load_study(pg_url, job_id)
    assert_budget_met_once(study, 3)
    assert job.n_complete + job.n_pruned + job.n_failed == 3
    assert sorted(study.trials[-1].intermediate_values) == [1, 2, 3, 4]  # run after the resume


@pytest.mark.usefixtures("local_ray")
def test_a_runner_stopped_with_sigterm_hands_its_job_to_the_next_runner_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    """SIGTERM (what `docker stop` sends) drains a runner: it stops its job's driver as Ctrl-C
    would and hands the job back, queued, then exits 0. Another runner claims it at once (no
    stale window to wait out: here it would be 10 minutes), not as a restart, and resumes it:
    the trial that was running goes on from its checkpoint, each epoch counted once."""
    env = environment(tmp_path / "automl-data", pg_url, AUTOML_STALE_AFTER="600")
    job_id = submit(env, tmp_path, job_spec("drained", budget={"n_trials": 2, "max_epochs": 3}))
    store = JobStore(pg_url)
    first = subprocess.Popen([AUTOML, "runner"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: epochs_reported(pg_url, job_id) >= 1, 240, "a first epoch")
        driver = drivers(job_id)
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=60)[0]  # the drain's bound, 30 s, and its exit
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, output
    assert driver and not [pid for pid in driver if is_alive(pid)]
    job = store.get(job_id)
    assert job.state == "queued" and job.restarts == 0, (job.state, job.restarts, output)
    assert "released" in [e.kind for e in store.events(job_id)]

    second = subprocess.Popen([AUTOML, "runner"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: store.get(job_id).state in ("succeeded", "failed"), 300, "the job")
    finally:
        second.terminate()
        output = second.communicate(timeout=90)[0]
    job = store.get(job_id)
    assert job.state == "succeeded" and job.restarts == 0, (job.error, output)
    study = load_study(pg_url, job_id)
    assert_budget_met_once(study, 2)
    assert [sorted(t.intermediate_values) for t in study.trials] == [[1, 2, 3]] * 2


@pytest.mark.usefixtures("local_ray")
def test_a_driver_cut_off_from_the_database_stops_before_another_runner_takes_its_job(
    pg_url: str, tmp_path: Path
) -> None:
    """Two runners; the first one's database connection (its job's driver's too) goes away for
    45 s. Its driver cannot prove it holds the job any more: within the give-up time (half of
    AUTOML_STALE_AFTER) of its last heartbeat it stops, writing nothing, before the second
    runner may take the job over. It must, although its trials run on without a database, and
    although it was started, as a shell's background job (`automl runner &`) is, with SIGINT
    ignored, so that its heartbeat's interrupt cannot reach it. The second runner resumes the
    job and finishes it: one driver at a time, each trial counted once."""
    stale_after = 30.0
    target = make_url(pg_url)
    store = JobStore(pg_url)
    shared = {"AUTOML_RUNS": str(tmp_path / "runs"), "AUTOML_ARTIFACTS": str(tmp_path / "artifacts"),
              "AUTOML_STALE_AFTER": str(stale_after)}
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        cut_off = environment(tmp_path / "first", proxy.url_for(pg_url), **shared)
        direct = environment(tmp_path / "second", pg_url, **shared)
        job_id = submit(direct, tmp_path, job_spec("outage", budget={"n_trials": 2, "max_epochs": 6}))
        first = subprocess.Popen([AUTOML, "runner"], env=cut_off, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        runners = [first]
        try:
            wait_for(lambda: epochs_reported(pg_url, job_id) >= 1, 240, "a first epoch")
            (driver,) = drivers(job_id)
            runners.append(subprocess.Popen([AUTOML, "runner"], env=direct,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True))
            proxy.cut()
            cut_at = time.time()
            wait_for(lambda: not is_alive(driver), stale_after, "the cut-off driver to stop")
            stopped_at = time.time()
            time.sleep(max(cut_at + 45 - time.time(), 0.0))
            proxy.restore()
            wait_for(lambda: store.get(job_id).state in ("succeeded", "failed"), 400, "the job")
        finally:
            for runner in runners:
                runner.terminate()
            outputs = [runner.communicate(timeout=90)[0] for runner in runners]
    job = store.get(job_id)
    assert job.state == "succeeded", (job.error, outputs)
    taken_over = [e.at.timestamp() for e in store.events(job_id) if e.kind == "resumed"]
    assert len(taken_over) == 1 and stopped_at < taken_over[0], (stopped_at, taken_over)
    log = (tmp_path / "first" / "logs" / f"{job_id}.log").read_text()
    assert "stopping: no heartbeat could be written" in log, log
    assert "the driver stopped the job" in log and "succeeded" not in log, log
    study = load_study(pg_url, job_id)
    assert_budget_met_once(study, 2)
    assert [sorted(t.intermediate_values) for t in study.trials] == [list(range(1, 7))] * 2
