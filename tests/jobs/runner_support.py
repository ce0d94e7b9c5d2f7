"""What the runner's fault tests share: a tiny job, a runner's environment, and what a job's
study and processes say."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import AUTOML, TINY_SPACE, load_study


def job_spec(name: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": 2, "max_epochs": 1},
        "max_concurrent_trials": 1,
        "strategy": {"seed": 0, "warm_start": False, "pruner": "none"},
        "space": TINY_SPACE,
        "evaluation": {"corruptions": False},  # the corruption suite: tests/jobs/test_driver.py
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


def cmdline_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def epochs_by_trial(url: str, job_id: str) -> list[int]:
    try:
        study = load_study(url, job_id)
    except KeyError:
        return []
    return [len(t.intermediate_values) for t in study.get_trials(deepcopy=False)]
