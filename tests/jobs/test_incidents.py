"""A job's error, as whoever sent the job reads it (`GET /jobs/{id}`): one line, a user error as
written, anything else an incident id and a type, with the traceback in the driver's log under
that id, never the server's paths, hosts or tracebacks in the line."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ray import tune
from ray.exceptions import RayTaskError

from automl.jobs.outcome import why_nothing_completed
from automl.search.spec import parse_spec
from automl.service.api import create_app
from automl.settings import Settings
from storage.jobs import JobStore
from tests.support import AUTOML, TINY_SPACE
from workers.config import ConfigError

SPEC = {"name": "incident", "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": 1, "max_epochs": 1}, "space": TINY_SPACE,
        "evaluation": {"corruptions": False}}
IN_THE_LOG = r"the traceback is in its driver's log under that id \(logs/{job}\.log on its runner\)"


@pytest.mark.slow
def test_a_driver_that_fails_inside_the_service_says_one_line_with_an_incident_id(
    pg_url: str, tmp_path: Path
) -> None:
    """The runner's cache folder is a file (a deployment mistake): the driver fails reading the
    dataset with an OSError that names a path on the server. Its user reads one line with an
    incident id; the operator finds the traceback under that id in the job's log."""
    home = tmp_path / "automl-data"
    not_a_folder = tmp_path / "server-cache"
    not_a_folder.write_text("a file where the decoded-image cache should be")
    job_id = "incident-1"
    JobStore(pg_url).submit(job_id, "incident", parse_spec(SPEC).model_dump(mode="json"))
    env = {**os.environ, "AUTOML_DATABASE_URL": pg_url, "AUTOML_HOME": str(home),
           "AUTOML_CACHE_DIR": str(not_a_folder),
           "AUTOML_RAY_ADDRESS": "127.0.0.1:1"}  # never reached: the dataset check comes first
    env.pop("AUTOML_API_URL", None)
    ran = subprocess.run([AUTOML, "runner", "--until-idle"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with TestClient(create_app(Settings(home=tmp_path / "api", database_url=pg_url))) as client:
        job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "failed"
    found = re.fullmatch(r"internal error ([0-9a-f]{8}): NotADirectoryError; "
                         + IN_THE_LOG.format(job=job_id), job["error"])
    assert found, job["error"]
    log = (home / "logs" / f"{job_id}.log").read_text()
    assert "Traceback (most recent call last)" in log and str(not_a_folder) in log
    assert f"internal error {found.group(1)} of job {job_id}" in log


def test_trials_internal_errors_are_named_by_type_with_their_tracebacks_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What Ray Tune hands back for a failed trial is the remote traceback (`RayTaskError`),
    the trial's own exception its cause: a user error's message is quoted, any other error is
    its type and the incident id the job's log has the traceback under."""
    remote = ('Traceback (most recent call last):\n  File "/root/.venv/lib/python3.11/site-'
              'packages/workers/engine.py", line 80, in train\n'
              "OSError: [Errno 28] No space left on device: '/srv/automl/runs/x'")
    full_disk = RayTaskError("run_tune_trial", remote, OSError(28, "No space left on device"))
    bad_lr = ConfigError("lr=5.0 must be in (0, 1]")
    user = RayTaskError("run_tune_trial", f"Traceback ...\nConfigError: {bad_lr}", bad_lr)
    results = [tune.Result(metrics={}, checkpoint=None, error=error.as_instanceof_cause(),
                           path=str(tmp_path))
               for error in (full_disk, user, full_disk)]
    with caplog.at_level(logging.ERROR):
        line = why_nothing_completed(parse_spec(SPEC), "job-x", results)
    found = re.fullmatch(r"no trial completed; first errors: internal error ([0-9a-f]{8}): "
                         r"OSError \| lr=5\.0 must be in \(0, 1\]; " + IN_THE_LOG.format(job="job-x"),
                         line)
    assert found, line
    logged = [r.getMessage() for r in caplog.records if found.group(1) in r.getMessage()]
    assert logged and "/srv/automl/runs/x" in logged[0]
