"""The runner: claims queued jobs and runs each in its own driver process.

One process per job keeps jobs apart (a crash, a leak or a hung Ray Tune loop stays in its job)
and lets several run at once (`--max-jobs`). Every job process drives the same Ray cluster: the
configured `AUTOML_RAY_ADDRESS`, or a local Ray the runner starts and shares with its children.
A job process that dies without finishing its row is marked failed with the end of its log;
a job whose heartbeat stops (its runner's machine died) is claimed again and resumed.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from automl.settings import Settings
from storage.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass
class _Child:
    job_id: str
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
    ) -> None:
        self.settings, self.max_jobs, self.poll_seconds = settings, max_jobs, poll_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.store = JobStore(settings.storage_url)
        self.children: dict[str, _Child] = {}
        self.stop = threading.Event()

    def ray_address(self) -> str:
        if self.settings.ray_address:
            return self.settings.ray_address
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        return str(ray.get_runtime_context().gcs_address)

    def run(self, until_idle: bool = False) -> None:
        """Claim and run jobs until stopped (or, with `until_idle`, until none is left)."""
        address = self.ray_address()
        log.warning("runner %s: up to %d job(s) at a time on Ray %s", self.name, self.max_jobs,
                    address)
        while not self.stop.is_set():
            self._reap()
            while len(self.children) < self.max_jobs:
                job = self.store.claim(self.name)
                if job is None:
                    break
                self.children[job.id] = self._spawn(job.id, address)
            if until_idle and not self.children:
                break
            self.stop.wait(self.poll_seconds)
        for child in self.children.values():
            child.process.wait()
        self._reap()

    def _spawn(self, job_id: str, address: str) -> _Child:
        logs = self.settings.home.resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{job_id}.log"
        env = {**os.environ, "AUTOML_RAY_ADDRESS": address,
               "AUTOML_HOME": str(self.settings.home.resolve()),
               "AUTOML_DATABASE_URL": self.settings.storage_url,
               "AUTOML_ARTIFACTS": self.settings.artifacts_path,
               "AUTOML_RUNS": str(self.settings.runs_path)}
        command = [sys.executable, "-m", "automl.cli", "run-stored", job_id]
        with log_path.open("ab") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        log.warning("job %s started (pid %d, log %s)", job_id, process.pid, log_path)
        return _Child(job_id, process, log_path)

    def _reap(self) -> None:
        for job_id, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.children[job_id]
            job = self.store.get(job_id)
            if job.state == "running":  # died without recording an outcome
                tail = _tail(child.log_path)
                self.store.finish(job_id, "failed", error=f"job process exited {code}: {tail}")
            log.warning("job %s finished: %s", job_id, self.store.get(job_id).state)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
