"""The runner under faults, with real processes: its database going away while it idles, its
job's driver killed under it, and the runner itself killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from automl.jobs.local_ray import descendants
from automl.settings import Settings
from storage.jobs import JobStore
from tests.support import AUTOML, TINY_SPACE, assert_budget_met_once, load_study, proxy_to, wait_for

pytestmark = pytest.mark.slow


def job_spec(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": 2, "max_epochs": 1},
        "max_concurrent_trials": 1,
        "strategy": {"seed": 0, "warm_start": False, "pruner": "none"},
        "space": TINY_SPACE,
        **changes,
    }


def environment(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    import ray

    env = {**os.environ, "AUTOML_DATABASE_URL": database_url, "AUTOML_HOME": str(home),
           "AUTOML_RAY_ADDRESS": ray.get_runtime_context().gcs_address, **extra}
    return env


def submit(env: dict[str, str], home: Path, spec: dict[str, Any]) -> str:
    path = home / f"{spec['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([AUTOML, "submit", str(path)], env={**env, "AUTOML_API_URL": ""},
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.split()[-1]


def drivers(job_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"automl.jobs.process {job_id}"],
                           capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def epochs_reported(url: str, job_id: str) -> int:
    try:
        study = load_study(url, job_id)
    except KeyError:
        return 0
    return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))


@pytest.mark.usefixtures("local_ray")
def test_an_idle_runner_waits_out_a_database_outage(pg_url: str, tmp_path: Path) -> None:
    """The database goes away while the runner polls for jobs: it waits, rather than exiting
    with its claim's error, and when the database is back it runs the next job."""
    target = make_url(pg_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        through_proxy = proxy.url_for(pg_url)
        env = environment(tmp_path / "automl-data", through_proxy)
        alive = tmp_path / "runner.alive"
        runner = subprocess.Popen([AUTOML, "runner", "--health-file", str(alive)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(alive.exists, 120, "the runner's loop")
            proxy.cut()
            beat = alive.stat().st_mtime
            wait_for(lambda: alive.stat().st_mtime > beat + 4, 60, "three polls without a database")
            assert runner.poll() is None, runner.communicate()[0]
            proxy.restore()
            job_id = submit(env, tmp_path, job_spec("after-outage"))
            store = JobStore(pg_url)
            wait_for(lambda: store.get(job_id).state == "succeeded", 300, "the job after the outage")
        finally:
            runner.terminate()
            output = runner.communicate(timeout=60)[0]
    assert "the database is unavailable" in output and "the database is back" in output, output


@pytest.mark.usefixtures("local_ray")
def test_a_killed_driver_is_restarted_then_given_up_then_resumed(pg_url: str, tmp_path: Path) -> None:
    """`kill -9` of a job's driver while its runner lives: the runner restarts the job where it
    stopped; the next death is one more than AUTOML_JOB_RESTARTS allows, so the job fails with
    its running trials told FAIL (none left RUNNING); `automl resume` finishes the budget, every
    trial counted once."""
    env = environment(tmp_path / "automl-data", pg_url, AUTOML_JOB_RESTARTS="1")
    spec = job_spec("killed-driver", budget={"n_trials": 3, "max_epochs": 3})
    job_id = submit(env, tmp_path, spec)
    store = JobStore(pg_url)
    runner = subprocess.Popen([AUTOML, "runner"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    claimed_at = time.monotonic()
    try:
        wait_for(lambda: epochs_reported(pg_url, job_id) >= 1, 240, "a first epoch")
        first = drivers(job_id)
        assert len(first) == 1, first
        os.kill(first[0], signal.SIGKILL)
        killed_at = time.monotonic()
        # the time limit counts the dead driver's running time, up to its last heartbeat
        ran = load_study(pg_url, job_id).user_attrs.get("run_seconds")
        assert ran is not None and 0 < ran < killed_at - claimed_at, ran
        wait_for(lambda: any(e.kind == "restarted" for e in store.events(job_id)), 60, "a restart")
        reported = epochs_reported(pg_url, job_id)
        wait_for(lambda: epochs_reported(pg_url, job_id) > reported, 240, "the restarted driver")
        second = drivers(job_id)
        assert len(second) == 1 and second != first, (first, second)
        os.kill(second[0], signal.SIGKILL)
        wait_for(lambda: store.get(job_id).state == "failed", 60, "the job to fail")
        failed = store.get(job_id)
        assert failed.error is not None and "was killed by SIGKILL" in failed.error
        assert f"automl resume {job_id}" in failed.error, failed.error
        # the line says where the driver's log is, and quotes none of it (it may hold anything)
        assert f"its driver's log is logs/{job_id}.log" in failed.error and " | " not in failed.error
        assert failed.n_running == 0
        study = load_study(pg_url, job_id)
        assert not [t for t in study.trials if t.state == TrialState.RUNNING]
        assert runner.poll() is None  # the runner lives on

        resumed = subprocess.run([AUTOML, "resume", job_id, "--storage", pg_url],
                                 env={**env, "AUTOML_API_URL": ""}, capture_output=True,
                                 text=True, timeout=60)
        assert resumed.returncode == 0 and "queued" in resumed.stdout, resumed.stderr
        wait_for(lambda: store.get(job_id).state == "succeeded", 300, "the resumed job")
    finally:
        runner.terminate()
        runner.communicate(timeout=60)
    study = load_study(pg_url, job_id)
    assert len(study.trials) == 3  # the budget, not a trial more
    for trial in study.trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.FAIL), trial.state
        if trial.state == TrialState.COMPLETE:  # each epoch reported once
            assert sorted(trial.intermediate_values) == [1, 2, 3]
    kinds = [e.kind for e in store.events(job_id)]
    assert kinds.count("restarted") == 1 and "requeued" in kinds


def test_a_runner_runs_jobs_on_its_own_ray_which_its_sigkill_takes_along(tmp_path: Path) -> None:
    """A runner with no Ray address starts its own Ray, and its jobs' drivers connect to it (as
    the shell that started the runner would: no Ray settings of the test's own). Killed with
    SIGKILL, nothing of that Ray may outlive the runner (Ray's own agents ignore SIGTERM: left
    to themselves, they run on for ever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOML_", "RAY_"))}
    env["AUTOML_HOME"] = str(tmp_path / "automl-data")
    job_id = submit(env, tmp_path, job_spec("own-ray", budget={"n_trials": 1, "max_epochs": 1}))
    alive = tmp_path / "runner.alive"
    runner = subprocess.Popen([AUTOML, "runner", "--health-file", str(alive)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = JobStore(Settings(home=tmp_path / "automl-data").storage_url)

    def agents() -> list[int]:
        return [pid for pid in descendants(runner.pid) if b"Agent" in _cmdline(pid)]

    try:
        wait_for(lambda: store.get(job_id).state == "succeeded", 240, "the job on the runner's Ray")
        wait_for(lambda: len(agents()) >= 2, 60, "Ray's agents")
        tree = descendants(runner.pid)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    wait_for(lambda: not [pid for pid in tree if _alive(pid)], 60, "the runner's Ray to end")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


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


def epochs_by_trial(url: str, job_id: str) -> list[int]:
    try:
        study = load_study(url, job_id)
    except KeyError:
        return []
    return [len(t.intermediate_values) for t in study.get_trials(deepcopy=False)]


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
    assert driver and not [pid for pid in driver if _alive(pid)]
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
            wait_for(lambda: not _alive(driver), stale_after, "the cut-off driver to stop")
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


