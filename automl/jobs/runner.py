"""The runner: claims queued jobs and runs each in its own driver process.

One process per job keeps jobs apart (a crash, a leak or a hung Ray Tune loop stays in its job)
and lets several run at once (`--max-jobs`). Every job process drives the same Ray cluster: the
configured `AUTOML_RAY_ADDRESS`, or a local Ray the runner starts (`automl.jobs.local_ray`), which
ends with the runner however it ends.

Faults a runner outlives: the database going away (every database call of its loop waits it
out, however long), and a job process that dies without an outcome (a signal, an out-of-memory
kill): the job is restarted where it stopped, like a job whose heartbeat went stale, up to
`AUTOML_JOB_RESTARTS` times; then it fails, its running trials told FAIL, with how to resume it.
A job process dies with its runner (a job whose heartbeat then stops is taken over by the next
runner and resumed there).

A runner told to stop (SIGTERM, Ctrl-C) drains instead: it claims nothing more, stops each of
its jobs' drivers as Ctrl-C would (trials stop; Ray Tune's state and the study stay resumable;
nothing is published) and hands each job back to the queue, where the next runner claims it at
once and resumes it (not a restart); then it exits, within `DRAIN_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState

from automl.jobs.local_ray import die_with_parent, local_ray
from automl.jobs.process import resume_hint
from automl.settings import Settings
from storage.db import DATABASE_ERRORS
from storage.jobs import JobStore
from storage.optuna_storage import engine_kwargs, is_outage
from workers.errors import first_line

log = logging.getLogger(__name__)
DRAIN_SECONDS = 30.0  # for the drivers to stop on a drain, before they are killed


@dataclass
class _Child:
    job_id: str
    attempts: int  # the claim it runs under: the job is no longer its own once this moves on
    process: subprocess.Popen[bytes]
    log_path: Path


class Runner:
    def __init__(
        self,
        settings: Settings,
        *,
        max_jobs: int = 1,
        poll_seconds: float = 2.0,
        name: str | None = None,
        health_file: Path | None = None,
    ) -> None:
        self.settings, self.max_jobs, self.poll_seconds = settings, max_jobs, poll_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.health_file = health_file
        self.store = JobStore(settings.storage_url)
        self.children: dict[str, _Child] = {}
        self.stop = threading.Event()
        self._studies: optuna.storages.RDBStorage | None = None

    def run(self, until_idle: bool = False) -> None:
        """Claim and run jobs until stopped (or, with `until_idle`, until none is left)."""
        if self.settings.ray_address:
            self._loop(self.settings.ray_address, until_idle)
        else:
            with local_ray() as address:
                self._loop(address, until_idle)

    def _loop(self, address: str, until_idle: bool) -> None:
        log.warning("runner %s: up to %d job(s) at a time on Ray %s", self.name, self.max_jobs,
                    address)
        down = False
        while not self.stop.is_set():
            try:
                self._reap(address)
                self._fill(address)
            except DATABASE_ERRORS as error:
                if not is_outage(error):
                    raise
                if not down:
                    log.warning("runner %s: the database is unavailable (%s); waiting for it",
                                self.name, first_line(error))
                down = True
            else:
                if down:
                    log.warning("runner %s: the database is back", self.name)
                down = False
                if until_idle and not self.children:
                    break
            if self.health_file is not None:
                self.health_file.touch()
            self.stop.wait(self.poll_seconds)
        self._drain()

    def _drain(self) -> None:
        """Stop every driver (SIGINT: as Ctrl-C, which they take as their runner stopping) and
        hand its job back. A driver still running after DRAIN_SECONDS is killed: its job
        resumes from Ray's last saved state, as after any kill."""
        if self.children:
            log.warning("runner %s: stopping; handing %d job(s) back to the queue", self.name,
                        len(self.children))
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + DRAIN_SECONDS
        for child in self.children.values():
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("job %s: its driver did not stop in %.0f s; killing it", child.job_id,
                            DRAIN_SECONDS)
                child.process.kill()
                child.process.wait()
        for job_id, child in self.children.items():
            try:
                handed = self.store.release(job_id, child.attempts, f"runner {self.name} stopped")
            except DATABASE_ERRORS as error:
                if not is_outage(error):
                    raise
                log.warning("job %s: could not hand it back (%s); the next runner takes it over "
                            "once its heartbeat is stale", job_id, first_line(error))
                continue
            if handed:
                log.warning("job %s: handed back to the queue", job_id)
        self.children.clear()

    def _fill(self, address: str) -> None:
        while len(self.children) < self.max_jobs:
            job = self.store.claim(self.name, stale_after=timedelta(seconds=self.settings.stale_after))
            if job is None:
                return
            if job.restarts > self.settings.job_restarts:
                log.warning("job %s: last seen on runner %s", job.id, job.runner)
                self._give_up(job.id, job.attempts, f"its driver stopped heartbeating "
                              f"{job.restarts} times")
                continue
            self.children[job.id] = self._spawn(job.id, job.attempts, address)

    def _spawn(self, job_id: str, attempts: int, address: str) -> _Child:
        logs = self.settings.home.resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{job_id}.log"
        env = {**os.environ, "AUTOML_RAY_ADDRESS": address,
               "AUTOML_HOME": str(self.settings.home.resolve()),
               "AUTOML_DATABASE_URL": self.settings.storage_url,
               "AUTOML_ARTIFACTS": self.settings.artifacts_path,
               "AUTOML_RUNS": str(self.settings.runs_path)}
        command = [sys.executable, "-m", "automl.jobs.process", job_id]
        with log_path.open("ab") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                       preexec_fn=die_with_parent)
        log.warning("job %s started (pid %d, log %s)", job_id, process.pid, log_path)
        return _Child(job_id, attempts, process, log_path)

    def _reap(self, address: str) -> None:
        for job_id, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            job = self.store.get(job_id)  # a database error leaves the child to the next pass
            del self.children[job_id]
            if job.state != "running" or job.attempts != child.attempts:
                log.warning("job %s finished: %s", job_id, job.state)
                continue
            # died without recording an outcome, and no other runner has taken the job over
            why = f"job process {_exit(code)}"
            log.warning("job %s: %s; its log ends: %s", job_id, why, _tail(child.log_path))
            if job.restarts < self.settings.job_restarts:
                taken = self.store.restart(job_id, self.name, child.attempts, why)
                if taken is not None:
                    log.warning("job %s: %s; restarting it (%d of %d)", job_id, why,
                                taken.restarts, self.settings.job_restarts)
                    self.children[job_id] = self._spawn(job_id, taken.attempts, address)
                continue
            self._give_up(job_id, child.attempts, why)

    def _give_up(self, job_id: str, attempts: int, why: str) -> None:
        """Fail the job, and its trials that were left running with its driver."""
        failed = self._fail_running_trials(job_id)
        limit = self.settings.job_restarts
        self.store.finish(
            job_id, "failed", attempts=attempts,
            error=f"{why}; gave up after {limit} restart(s) (AUTOML_JOB_RESTARTS), {failed} "
                  f"running trial(s) told FAIL; its driver's log is logs/{job_id}.log on its "
                  f"runner; {resume_hint(job_id)} once the cause is fixed",
        )
        log.warning("job %s failed: %s", job_id, why)

    def _fail_running_trials(self, job_id: str) -> int:
        # no trial cache: a runner lives for weeks and reads each study once, here
        if self._studies is None:
            url = self.settings.storage_url
            self._studies = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
        try:
            study_id = self._studies.get_study_id_from_name(job_id)
        except KeyError:
            return 0
        running = self._studies.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        for trial in running:
            trial_id = self._studies.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            self._studies.set_trial_state_values(trial_id, TrialState.FAIL)
        return len(running)


def _exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        oom = " (what an out-of-memory kill looks like)" if code == -signal.SIGKILL else ""
        return f"was killed by {name}{oom}"
    return f"exited with code {code}"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
