"""The runner under faults, with real processes: its database going away while it idles, its
job's driver killed under it, and the runner itself killed with SIGKILL (jobs handed between
runners: test_runner_handover.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from automl.jobs.local_ray import descendants
from automl.settings import Settings
from storage.jobs import JobStore
from tests.jobs.runner_support import (
    cmdline_of,
    drivers,
    environment,
    epochs_reported,
    is_alive,
    job_spec,
    submit,
)
from tests.support import AUTOML, load_study, proxy_to, wait_for

pytestmark = pytest.mark.slow


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
        return [pid for pid in descendants(runner.pid) if b"Agent" in cmdline_of(pid)]

    try:
        wait_for(lambda: store.get(job_id).state == "succeeded", 240, "the job on the runner's Ray")
        wait_for(lambda: len(agents()) >= 2, 60, "Ray's agents")
        tree = descendants(runner.pid)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    wait_for(lambda: not [pid for pid in tree if is_alive(pid)], 60, "the runner's Ray to end")
