"""Freeze-thaw (`strategy.pruner: freeze-thaw`) in a real job on real local Ray + real Optuna:
a trial below a rung's cut is paused with its checkpoint, later resumed from it, and the study
records one continuous curve per trial; paused trials left when the budget is spent end PRUNED.

The one module job also takes the faults paused trials must survive (one job, not three: the
suite's time): its PostgreSQL goes away for 3 s right after the first pause, and a trial's worker
is killed mid-epoch while trials are paused (Ray retries it from its checkpoint)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from automl.jobs.driver import run_job
from automl.jobs.outcome import JobOutcome
from automl.search import keys
from automl.search.spec import parse_spec
from automl.settings import Settings
from automl.tune.retention import checkpoint_folders
from storage.optuna_storage import optuna_storage
from tests.support import DIGITS_JOB, proxy_to

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

FREEZE_THAW_JOB: dict[str, Any] = {
    **DIGITS_JOB,
    "budget": {"n_trials": 7, "max_epochs": 4},
    "strategy": {"seed": 0, "warm_start": False, "pruner": "freeze-thaw",
                 # promotion-type ASHA's resume rule: a pause and a resume happen for sure
                 "pruner_options": {"min_resource": 1, "reduction_factor": 2, "learned": False}},
}


@dataclass
class Heard:
    events: list[tuple[str, int, int | None]] = field(default_factory=list)

    def on_event(self, kind: str, number: int, value: float | None = None,
                 epoch: int | None = None, note: str | None = None) -> None:
        self.events.append((kind, number, epoch))


@dataclass
class Faulty(Heard):
    """Heard, and the faults: the database cut for 3 s at the first pause (while the bridge
    records it); half a second after a trial reports epoch 3 while trials are paused, its worker
    process killed mid-epoch (Ray retries it; with promotion-type ASHA a resumed trial cannot be
    relied on to reach a non-rung epoch: it may be paused again at the next rung)."""

    proxy: Any = None
    runs: Path | None = None  # the job's Ray run folder (its name: the job's id)
    url: str | None = None  # the job's database, not through the proxy
    outage: bool = False
    killed: list[int] = field(default_factory=list)  # the trial whose worker died
    aiming: bool = False  # a kill is scheduled
    victim: int | None = None  # its worker's pid

    def on_event(self, kind: str, number: int, value: float | None = None,
                 epoch: int | None = None, note: str | None = None) -> None:
        super().on_event(kind, number, value, epoch, note)
        if kind == "paused" and not self.outage and self.proxy is not None:
            self.outage = True
            self.proxy.cut()
            threading.Timer(3.0, self.proxy.restore).start()
        # epoch 3: no rung (1, 2, 4), not the last: the trial trains on, its worker is there
        paused = any(k == "paused" for k, _, _ in self.events)
        if kind == "report" and epoch == 3 and paused and not self.killed and not self.aiming:
            self.aiming = True  # one kill at a time; a later report at epoch 3 tries again
            threading.Timer(0.5, self.kill, args=(number, epoch)).start()

    def kill(self, number: int, epoch: int) -> None:
        """The worker that reported the trial's epoch (Ray's result says its pid)."""
        assert self.runs is not None and self.url is not None
        try:
            study = optuna.load_study(study_name=self.runs.name, storage=optuna_storage(self.url))
            ray_id = study.trials[number].user_attrs[keys.RAY_TRIAL_ID]
            for path in self.runs.glob("*/result.json"):
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if rows and rows[0].get("trial_id") == ray_id and rows[-1].get("epoch") == epoch:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(rows[-1]["pid"]), signal.SIGKILL)
                        self.victim = int(rows[-1]["pid"])
                        self.killed.append(number)
                    return
        finally:
            self.aiming = False


@dataclass
class Ran:
    outcome: JobOutcome
    settings: Settings
    study: optuna.Study
    heard: Heard


def job_id_of(tmp: Path) -> str:
    return f"ft-{tmp.name[-6:]}".replace("_", "-")


def run(tmp: Path, heard: Heard | None = None, database_url: str | None = None,
        **changes: Any) -> Ran:
    spec = parse_spec({**FREEZE_THAW_JOB, **changes})
    settings = Settings(home=tmp / "automl-data", database_url=database_url)
    job_id = job_id_of(tmp)
    heard = heard or Heard()
    outcome = run_job(spec, job_id, settings, events=heard)
    study = optuna.load_study(study_name=job_id, storage=optuna_storage(settings.storage_url))
    return Ran(outcome, settings, study, heard)


def ray_results(ran: Ran) -> dict[str, list[dict[str, Any]]]:
    """Each Ray trial's results as it reported them (its result.json), by Ray trial id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in (ran.settings.runs_path / ran.outcome.job_id).glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "epoch" in r]
        if rows:
            out[str(rows[0]["trial_id"])] = rows
    return out


@pytest.fixture(scope="module")
def ft_job(tmp_path_factory: pytest.TempPathFactory, pg_module_url: str) -> Iterator[Ran]:
    target = make_url(pg_module_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        tmp = tmp_path_factory.mktemp("freeze-thaw")
        heard = Faulty(proxy=proxy, runs=tmp / "automl-data" / "runs" / job_id_of(tmp),
                       url=pg_module_url)
        ran = run(tmp, heard, database_url=proxy.url_for(pg_module_url))
        proxy.restore()
        # read the record straight from the database, not through the proxy
        ran.study = optuna.load_study(study_name=ran.study.study_name,
                                      storage=optuna_storage(pg_module_url))
        yield ran


def test_paused_trials_outlive_a_database_outage_and_a_dead_worker(ft_job: Ran) -> None:
    """Both faults hit: the outage came at a pause, the kill while trials were paused; the
    killed trial was retried by Ray (not failed), and ended with its curve whole (epochs 1..n);
    the paused trials were still resumed or pruned at the end, none failed."""
    heard = ft_job.heard
    assert isinstance(heard, Faulty)
    assert heard.outage and heard.killed and heard.victim, " ".join(map(str, heard.events))
    from ray import tune

    failures = [t.run_metadata.num_failures for t in tune.ExperimentAnalysis(
        str(ft_job.settings.runs_path / ft_job.outcome.job_id)).trials]
    assert sum(failures) >= 1
    trial = ft_job.study.trials[heard.killed[0]]
    assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
    epochs = sorted(trial.intermediate_values)
    assert epochs == list(range(1, len(epochs) + 1))
    assert TrialState.FAIL not in {t.state for t in ft_job.study.trials}


def test_a_trial_is_paused_and_resumed_from_its_checkpoint(ft_job: Ran) -> None:
    assert ft_job.outcome.state == "succeeded", ft_job.outcome.error
    paused = {n for kind, n, _ in ft_job.heard.events if kind == "paused"}
    resumed = {n for kind, n, _ in ft_job.heard.events if kind == "running"}
    assert paused, ft_job.heard.events
    assert resumed & paused, ft_job.heard.events
    results = ray_results(ft_job)
    for trial in ft_job.study.trials:
        if trial.number not in resumed:
            continue
        # one continuous curve in the study: epochs 1..n, each once
        epochs = sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1))
        pause_epoch = min(e for kind, n, e in ft_job.heard.events
                          if kind == "paused" and n == trial.number and e is not None)
        assert len(epochs) > pause_epoch
        # the Ray trial went on from its checkpoint: its epochs and iterations continue
        rows = results[trial.user_attrs[keys.RAY_TRIAL_ID]]
        reported = [int(r["epoch"]) for r in rows]
        # never from scratch: epochs go on (the killed worker's epoch may be redone once)
        assert reported.count(1) == 1 and reported == sorted(reported), reported
        assert sorted(set(reported)) == list(range(1, max(reported) + 1)), reported
        assert trial.user_attrs.get(keys.PAUSED) is None or trial.state != TrialState.RUNNING


def test_counts_are_exact_and_paused_leftovers_end_pruned(ft_job: Ran) -> None:
    study, outcome = ft_job.study, ft_job.outcome
    assert len(study.trials) == 7  # a resume is not a new trial
    assert all(t.state.is_finished() for t in study.trials)
    counts = outcome.counts
    assert counts.paused == 0 and counts.running == 0
    assert counts.complete + counts.pruned + counts.failed == 7
    assert counts.failed == 0
    told: dict[int, list[str]] = defaultdict(list)
    for kind, number, _ in ft_job.heard.events:
        if kind in ("complete", "pruned", "failed"):
            told[number].append(kind)
    assert all(len(kinds) == 1 for kinds in told.values()), told
    for trial in study.trials:  # a paused trial never completes: it resumed, or was pruned
        if trial.user_attrs.get(keys.PAUSED) is not None:  # paused when the job ended
            assert trial.state == TrialState.PRUNED
            assert max(trial.intermediate_values) == trial.user_attrs[keys.PAUSED]
        if trial.state == TrialState.COMPLETE:
            assert max(trial.intermediate_values) == 4


def test_retention_leaves_no_checkpoint_of_a_pruned_trial(ft_job: Ran) -> None:
    run_dir = ft_job.settings.runs_path / ft_job.outcome.job_id
    folders = {json.loads(line)["trial_id"]: p.parent
               for p in run_dir.glob("*/result.json")
               for line in p.read_text().splitlines()[:1] if line.strip()}
    for trial in ft_job.study.trials:
        folder = folders.get(trial.user_attrs.get(keys.RAY_TRIAL_ID))
        if trial.state == TrialState.PRUNED and folder is not None:
            assert checkpoint_folders(folder) == [], trial.number


def test_a_killed_driver_keeps_paused_trials_resumable(tmp_path: Path) -> None:
    """The driver killed while a trial is paused: the restarted driver (`Tuner.restore`, which
    brings paused trials back as pending) keeps it paused until the policy resumes it from its
    checkpoint, or gives it up at the end; its curve is continuous and nothing counted twice."""
    import subprocess

    from tests.support import AUTOML, assert_only_kept_checkpoints, load_study, wait_for

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**FREEZE_THAW_JOB, "name": "ft-driver"}))
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data")}
    command = [AUTOML, "run", str(job), "--job-id", "ft-driver", "--ray-address", "local"]
    settings = Settings(home=tmp_path / "automl-data")

    def paused_now() -> dict[int, int]:
        study = load_study(settings.storage_url, "ft-driver")
        return {t.number: int(t.user_attrs[keys.PAUSED]) for t in study.get_trials(deepcopy=False)
                if keys.is_paused(t.user_attrs, t.state)}

    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: bool(paused_now()), what="a paused trial")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
        first.wait()
    paused = paused_now()
    assert paused
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "job ft-driver succeeded" in second.stdout
    study = load_study(settings.storage_url, "ft-driver")
    assert len(study.trials) == 7 and all(t.state.is_finished() for t in study.trials)
    assert not any(t.state == TrialState.FAIL for t in study.trials)
    for trial in study.trials:
        epochs = sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1)), (trial.number, epochs)
        if trial.state == TrialState.COMPLETE:
            assert epochs[-1] == 4
    for number, epoch in paused.items():  # resumed (its curve went on) or given up: pruned
        trial = study.trials[number]
        assert trial.state == TrialState.PRUNED or max(trial.intermediate_values) > epoch
    for trial in study.trials:  # paused at the end: it never trained on unasked (as a pending
        if trial.user_attrs.get(keys.PAUSED) is not None:  # trial Ray restored would have)
            assert trial.state == TrialState.PRUNED
            assert max(trial.intermediate_values) == trial.user_attrs[keys.PAUSED]
    # Ray's record of each trial: epochs continue across pauses and the restart, never from 1
    ran = Ran(JobOutcome("ft-driver", "succeeded", keys.TrialCounts()), settings, study, Heard())
    for rows in ray_results(ran).values():
        reported = [int(r["epoch"]) for r in rows]
        # never restarted from scratch (a redone epoch after the kill is the most it repeats)
        assert reported.count(1) == 1 and reported == sorted(reported), reported
    assert_only_kept_checkpoints(study, settings.runs_path / "ft-driver")
