"""Faults lose no trial and count none twice: a worker killed mid-trial, the driver killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from automl.errors import JobError
from automl.jobs.driver import run_job
from automl.jobs.local_ray import descendants
from automl.jobs.outcome import JobOutcome
from automl.search.keys import BEST_TRIAL as BEST_TRIAL_ATTR
from automl.search.keys import ERROR
from automl.search.spec import parse_spec
from automl.settings import Settings
from tests.support import (
    AUTOML,
    DIGITS_JOB,
    assert_budget_met_once,
    assert_only_kept_checkpoints,
    load_study,
    misfit_weights,
    trial_folders,
    wait_for,
)

pytestmark = pytest.mark.slow

STEADY_JOB: dict[str, Any] = {
    **DIGITS_JOB,
    "name": "faults",
    "budget": {"n_trials": 3, "max_epochs": 4},
    "strategy": {"seed": 0, "warm_start": False, "pruner": "none"},
    "max_failures": 3,
    "space": {**DIGITS_JOB["space"], "lr": 0.003, "freeze_stages": 0},
}


def reported_epochs(url: str, study_name: str) -> dict[int, int]:
    if not Path(url.removeprefix("sqlite:///")).exists():
        return {}  # the job has not created its database yet
    try:  # optuna_storage: the job may be creating Optuna's tables at this very moment
        study = load_study(url, study_name)
    except KeyError:
        return {}
    return {t.number: len(t.intermediate_values) for t in study.get_trials(deepcopy=False)}


def trial_workers() -> list[int]:
    """This session's Ray trial workers (not those of a test running beside it)."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ray::ImplicitFunc" in name:
            found.append(pid)
    return found


def assert_every_trial_counted_once(study: optuna.Study, ray_dir: Path, epochs: int) -> None:
    ray_trials = tune.ExperimentAnalysis(str(ray_dir)).trials
    ours = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    assert {t.trial_id for t in ray_trials} <= set(ours)
    for ray_trial in ray_trials:
        trial = ours[ray_trial.trial_id]
        assert trial.state == TrialState.COMPLETE, (trial.number, trial.state)
        # one value per epoch, epochs 1..N: nothing lost, nothing reported twice
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
    # none is left running in the study
    assert all(t.state.is_finished() for t in study.trials)


@pytest.mark.usefixtures("local_ray")
def test_a_worker_killed_mid_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    spec = parse_spec(STEADY_JOB)
    settings = Settings(home=tmp_path / "automl-data")
    job_id = "faults-worker"
    result: dict[str, JobOutcome] = {}
    before = trial_folders()
    runner = threading.Thread(target=lambda: result.update(out=run_job(spec, job_id, settings)))
    runner.start()
    wait_for(lambda: any(n >= 1 for n in reported_epochs(settings.storage_url, job_id).values()))
    victims = trial_workers()
    assert victims, "no trial worker process found"
    os.kill(victims[0], signal.SIGKILL)
    runner.join(timeout=600)
    outcome = result["out"]
    assert outcome.state == "succeeded", outcome.error
    study = load_study(settings.storage_url, job_id)
    assert len(study.trials) == 3
    ray_dir = settings.runs_path / job_id
    assert_every_trial_counted_once(study, ray_dir, epochs=4)
    failures = [t.run_metadata.num_failures for t in tune.ExperimentAnalysis(str(ray_dir)).trials]
    assert sum(failures) >= 1  # the kill really hit a trial, and it was retried
    assert trial_folders() - before == set()  # the killed worker's folder too


def test_a_killed_driver_resumes_the_job(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**STEADY_JOB, "budget": {"n_trials": 4, "max_epochs": 4}}))
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"  # tracked: a resumed job goes on in its runs
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data"), "AUTOML_MLFLOW_URI": mlflow_uri}
    command = [AUTOML, "run", str(job), "--job-id", "faults-driver", "--ray-address", "local"]
    settings = Settings(home=tmp_path / "automl-data")
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sum(reported_epochs(settings.storage_url, "faults-driver").values()) >= 3)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
        first.wait()
    before = reported_epochs(settings.storage_url, "faults-driver")
    assert any(0 < n < 4 for n in before.values())  # killed with a trial mid-way
    # the two races a kill can land in, made here for certain:
    # 1. a trial asked after Ray last saved its state, so Ray will not resume it (as the
    #    searcher leaves it: asked, tagged, no epoch);
    killed = load_study(settings.storage_url, "faults-driver")
    lost = killed.ask()
    lost.set_user_attr("ray_trial_id", "asked-after-the-last-snapshot")
    # 2. a trial's next checkpoint written and the one Ray's state names deleted, the state
    #    not yet saved again
    unfinished = [t for t in tune.ExperimentAnalysis(str(settings.runs_path / "faults-driver")).trials
                  if t.status != "TERMINATED" and t.checkpoint is not None]
    assert unfinished, "the kill left no unfinished trial with a checkpoint"
    named = Path(unfinished[0].checkpoint.path)
    if named.exists():  # else the kill itself landed in that race
        shutil.copytree(named, named.with_name("checkpoint_999999"))
        shutil.rmtree(named)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "job faults-driver succeeded" in second.stdout
    study = load_study(settings.storage_url, "faults-driver")
    assert_every_trial_counted_once(study, settings.runs_path / "faults-driver", epochs=4)
    # the budget is met exactly: no trial lost, none run twice, and the orphan was run (under
    # its own number), not failed and replaced by a fifth trial
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert sorted(study.trials[lost.number].intermediate_values) == [1, 2, 3, 4]
    # MLflow: one run for the job and one per trial, however often each was started
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "automl"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 5 and all(r.info.status == "FINISHED" for r in runs)
    tracked = {int(r.data.tags["automl.trial"]): r.info.run_id
               for r in runs if "automl.trial" in r.data.tags}
    assert sorted(tracked) == [0, 1, 2, 3]
    for run_id in tracked.values():
        assert {m.step for m in client.get_metric_history(run_id, "val_accuracy")} == {1, 2, 3, 4}


def test_ctrl_c_stops_the_job_without_publishing_and_it_resumes(tmp_path: Path) -> None:
    """Ctrl-C in a terminal (SIGINT to the whole process group) must not pass a half-run search
    off as the job's result: the job is marked cancelled with how to resume it, and resuming
    finishes the budget with every trial counted once."""
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**STEADY_JOB, "budget": {"n_trials": 3, "max_epochs": 3}}))
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data")}
    settings = Settings(home=tmp_path / "automl-data")
    command = [AUTOML, "run", str(job), "--job-id", "faults-ctrl-c", "--ray-address", "local"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # a trial finished, so the resumed view has history to show
        wait_for(lambda: 3 in reported_epochs(settings.storage_url, "faults-ctrl-c").values())
    finally:
        os.killpg(first.pid, signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, out + err
    assert "succeeded" not in out and "--job-id faults-ctrl-c" in err
    listed = subprocess.run([AUTOML, "status", "faults-ctrl-c"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert "cancelled" in listed.stdout, listed.stdout
    # the command that resumes it, as it is (not a JOB_FILE placeholder), on one copyable line
    # however long the path
    assert f"resume it with `automl run {job} --job-id faults-ctrl-c`" in listed.stdout, \
        listed.stdout
    interrupted = load_study(settings.storage_url, "faults-ctrl-c")
    assert BEST_TRIAL_ATTR not in interrupted.user_attrs  # nothing published as the result
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming job faults-ctrl-c" in second.stderr
    final_view = second.stderr[second.stderr.rindex("job faults-ctrl-c "):]
    # the view counts the trials from before the interrupt, and ends with none running (a
    # trial asked just before Ctrl-C that Ray did not save is run again under its number)
    assert "complete 3" in final_view and "running 0" in final_view, final_view
    study = load_study(settings.storage_url, "faults-ctrl-c")
    assert_every_trial_counted_once(study, settings.runs_path / "faults-ctrl-c", epochs=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


@pytest.mark.usefixtures("local_ray")
def test_a_job_whose_ray_state_is_gone_runs_only_the_trials_left(tmp_path: Path) -> None:
    """A driver killed before Ray first saved its state, or a runner on another machine taking
    the job over, starts a fresh Tune run on the job's study: it runs what the budget has left,
    the trial that was running included, not the whole budget again."""
    settings = Settings(home=tmp_path / "automl-data")
    job_id = "faults-no-ray-state"
    short = {**STEADY_JOB, "budget": {"n_trials": 2, "max_epochs": 2}}
    assert run_job(parse_spec(short), job_id, settings).state == "succeeded"
    shutil.rmtree(settings.runs_path / job_id)  # Ray's state, as on a machine that never had it
    study = load_study(settings.storage_url, job_id)
    running = study.ask()  # the trial the lost driver was running
    running.set_user_attr("ray_trial_id", "known-only-to-the-lost-driver")
    longer = {**short, "budget": {"n_trials": 4, "max_epochs": 2}}
    outcome = run_job(parse_spec(longer), job_id, settings)
    assert outcome.state == "succeeded", outcome.error
    study = load_study(settings.storage_url, job_id)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert sorted(study.trials[running.number].intermediate_values) == [1, 2]
    shutil.rmtree(settings.runs_path / job_id)  # the budget is spent, and the checkpoints gone
    with pytest.raises(JobError, match="has run all 4 trials, but its Ray run folder"):
        run_job(parse_spec(longer), job_id, settings)


@pytest.mark.usefixtures("local_ray")
def test_a_cancel_seen_with_no_trial_running_ends_the_job(tmp_path: Path) -> None:
    """The searcher sees the cancel when Tune asks for a trial with none running (here: from the
    start). The job must end then, not after Tune's 10-minute wait for a trial."""
    settings = Settings(home=tmp_path / "automl-data")
    result: dict[str, JobOutcome] = {}
    spec = parse_spec(STEADY_JOB)
    runner = threading.Thread(target=lambda: result.update(
        out=run_job(spec, "faults-cancel-idle", settings, cancelled=lambda: True)), daemon=True)
    runner.start()
    runner.join(timeout=180)
    assert not runner.is_alive(), "the cancelled job is still waiting"
    assert result["out"].state == "cancelled"
    study = load_study(settings.storage_url, "faults-cancel-idle")
    assert study.trials == []


@pytest.mark.usefixtures("local_ray")
def test_a_trial_whose_own_code_raises_fails_once_and_is_not_retried(tmp_path: Path) -> None:
    """`max_failures` is for lost workers: an error of the trial's own (here weights that do not
    fit its backbone) would be the same on every retry. Each trial runs once and is told FAIL
    with its error's line, which the job's error names."""
    space = {**DIGITS_JOB["space"], "pretrained": str(misfit_weights(tmp_path))}
    spec = parse_spec({**DIGITS_JOB, "name": "errors", "budget": {"n_trials": 2, "max_epochs": 1},
                       "max_concurrent_trials": 1, "max_failures": 3, "space": space})
    settings = Settings(home=tmp_path / "automl-data")
    outcome = run_job(spec, "errors-once", settings)
    assert outcome.state == "failed"
    assert "size mismatch for conv1.0.weight" in str(outcome.error), outcome.error
    ray_trials = tune.ExperimentAnalysis(str(settings.runs_path / "errors-once")).trials
    assert [t.run_metadata.num_failures for t in ray_trials] == [1, 1]  # each ran once
    study = load_study(settings.storage_url, "errors-once")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    for trial in study.trials:
        assert "size mismatch for conv1.0.weight" in trial.user_attrs[ERROR], trial.user_attrs


def test_a_cancelled_job_resumed_with_automl_run_runs_the_rest_of_its_budget(tmp_path: Path) -> None:
    """A cancel with a trial mid-way ends that trial (complete with its best epoch), and
    retention treats it as any finished trial: its checkpoint kept without optimizer state.
    `automl run FILE --job-id` then runs what the budget has left, not nothing: exactly
    n_trials trials in all, none run twice."""
    from storage.jobs import JobStore

    job_id = "faults-cancel-resume"
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**STEADY_JOB, "max_concurrent_trials": 1,
                               "budget": {"n_trials": 3, "max_epochs": 4},
                               "checkpoints": {"keep_trials": 3}}))
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data")}
    settings = Settings(home=tmp_path / "automl-data")
    url = settings.storage_url
    command = [AUTOML, "run", str(job), "--job-id", job_id, "--ray-address", "local"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # a trial complete, the next mid-way
        wait_for(lambda: sorted(reported_epochs(url, job_id).values()) == [1, 4])
        JobStore(url).request_cancel(job_id)  # what `automl cancel` and DELETE /jobs/{id} do
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert first.returncode == 1 and f"job {job_id} cancelled" in out, out + err
    cancelled = load_study(url, job_id)  # the one mid-way: complete with its best epoch
    ran = [t.state for t in cancelled.trials if not t.user_attrs.get("uncounted")]
    assert ran == [TrialState.COMPLETE] * 2, [(t.state, t.user_attrs) for t in cancelled.trials]
    assert_only_kept_checkpoints(cancelled, settings.runs_path / job_id)

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "job faults-cancel-resume succeeded" in second.stdout, second.stdout
    study = load_study(url, job_id)
    assert_budget_met_once(study, 3)
    assert sorted(study.trials[-1].intermediate_values) == [1, 2, 3, 4]  # run after the resume
    assert_only_kept_checkpoints(study, settings.runs_path / job_id)


@pytest.mark.usefixtures("local_ray")
def test_the_time_limit_counts_only_the_time_the_job_runs(tmp_path: Path) -> None:
    """budget.time_limit bounds the time the job runs under a driver, summed over its
    drivers: the time it sat cancelled does not count (a resumed job runs what is left of its
    limit, however long ago it started), and the time it ran before does (it does not get its
    whole limit again)."""
    settings = Settings(home=tmp_path / "automl-data")
    job_id = "faults-time-limit"
    limit = 40.0
    spec = parse_spec({**STEADY_JOB, "max_concurrent_trials": 1,
                       "budget": {"n_trials": 100, "max_epochs": 1, "time_limit": limit}})
    started = time.monotonic()
    first = run_job(spec, job_id, settings, cancelled=lambda: time.monotonic() > started + 15)
    assert first.state == "cancelled", first.error
    ran_first = float(load_study(settings.storage_url, job_id).user_attrs["run_seconds"])
    assert 5 < ran_first < time.monotonic() - started, ran_first
    trials_first = len(load_study(settings.storage_url, job_id).trials)
    time.sleep(max(limit - (time.monotonic() - started), 0.0) + 5)  # the limit is past, by the clock

    second = run_job(spec, job_id, settings)
    assert second.state == "succeeded", second.error
    study = load_study(settings.storage_url, job_id)
    assert len(study.trials) > trials_first  # resumed: it had time left
    ran = float(study.user_attrs["run_seconds"])
    assert limit <= ran < limit + 15, (ran_first, ran)  # then ended by the limit
    assert all(t.state.is_finished() for t in study.trials)


@pytest.mark.usefixtures("local_ray")
def test_a_cancel_starts_no_waiting_trial(tmp_path: Path) -> None:
    """One trial fits the cluster at a time, two may run: the second waits. A cancel that comes
    as the first ends must not let the waiting one start on the freed resources (it is told
    FAIL, never having run), and every trial keeps only what retention keeps."""
    settings = Settings(home=tmp_path / "automl-data")
    job_id = "faults-cancel-race"
    spec = parse_spec({**STEADY_JOB, "resources": {"cpu": 2}, "max_concurrent_trials": 2,
                       "budget": {"n_trials": 4, "max_epochs": 1}})
    seen: list[float] = []

    def cancelled() -> bool:  # from the moment a trial is complete
        if seen:
            return True
        try:
            study = load_study(settings.storage_url, job_id)
        except KeyError:
            return False
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return False
        seen.append(time.time())
        return True

    outcome = run_job(spec, job_id, settings, cancelled=cancelled)
    assert outcome.state == "cancelled", outcome.error
    ray_trials = tune.ExperimentAnalysis(str(settings.runs_path / job_id)).trials
    started = {t.trial_id: t.run_metadata.start_time for t in ray_trials}
    assert len(started) == 2, started  # the first, and the one waiting
    assert all(at is None or at < seen[0] for at in started.values()), (seen, started)
    study = load_study(settings.storage_url, job_id)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert_only_kept_checkpoints(study, settings.runs_path / job_id)
