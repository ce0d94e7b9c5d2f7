"""`automl run` and `automl submit`, in this process: what they compute, and how often."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automl.cli import app
from tests.support import DIGITS_JOB, backbone_weights, count_spec_work


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_run_validates_its_spec_and_checks_its_weights_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the job file validates the spec (its space built, every override checked with
    the engine and timm) and loads its weights file; the stored job, the driver, the strategy
    and the outcome reuse what that found."""
    space = {**DIGITS_JOB["space"], "pretrained": str(backbone_weights(tmp_path))}
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**DIGITS_JOB, "space": space, "max_concurrent_trials": 1,
                               "budget": {"n_trials": 1, "max_epochs": 1}}))
    monkeypatch.chdir(tmp_path)
    with count_spec_work(monkeypatch) as counts:
        result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 0, result.output
    assert counts == {"validated": 1, "space built": 1, "override checked": len(space),
                      "weights checked": 1}


def test_submit_validates_its_spec_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        pg_url: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(DIGITS_JOB))
    monkeypatch.chdir(tmp_path)
    with count_spec_work(monkeypatch) as counts:
        result = CliRunner().invoke(app, ["submit", str(job), "--storage", pg_url])
    assert result.exit_code == 0, result.output
    assert counts == {"validated": 1, "space built": 1,
                      "override checked": len(DIGITS_JOB["space"]), "weights checked": 0}
