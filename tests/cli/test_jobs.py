"""`automl run` and `automl submit`, in this process: what they compute, and how often."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from automl.cli import app
from tests.support import DIGITS_JOB, MINIMAL_JOB, backbone_weights, count_spec_work


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


def test_cli_errors_keep_brackets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Error text is printed as is: a regex or a path with [ ] is not eaten as rich markup."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**MINIMAL_JOB, "name": "My Job"}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    assert "^[a-z0-9][a-z0-9-]{0,40}$" in result.output


@pytest.mark.parametrize("args", [["run", "missing.yaml"], ["run", "{job}"]])
def test_run_refuses_bad_specs_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**MINIMAL_JOB, "budget": {"n_trials": -1}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [a.format(job=job) for a in args])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert not (tmp_path / "automl-data").exists()


@pytest.mark.parametrize("damage", ["corrupt", "empty_class", "one_class"])
def test_run_refuses_a_broken_dataset_before_storing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, color_folder: Path, damage: str
) -> None:
    import shutil

    if damage == "corrupt":
        (color_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    elif damage == "empty_class":
        (color_folder / "green").mkdir()
    else:
        shutil.rmtree(color_folder / "blue")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "t", "dataset": {"source": str(color_folder)}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    expected = {"corrupt": "cannot decode image", "empty_class": "has no images",
                "one_class": "needs at least two class folders"}[damage]
    assert "error: dataset:" in message and expected in message
    assert not (tmp_path / "automl-data").exists()


def test_distill_refuses_a_job_that_has_not_succeeded(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(MINIMAL_JOB))
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path}/jobs.db"
    submitted = CliRunner().invoke(app, ["submit", str(job), "--storage", storage])
    assert submitted.exit_code == 0, submitted.output
    job_id = next(word for word in submitted.output.split() if word.startswith("t-"))
    queued = CliRunner().invoke(app, ["distill", job_id, "--storage", storage])
    assert queued.exit_code == 2
    assert f"job {job_id} is queued: distill a job that succeeded" in queued.output
    unknown = CliRunner().invoke(app, ["distill", "nope-123456", "--storage", storage])
    assert unknown.exit_code == 2 and "unknown job id 'nope-123456'" in unknown.output


def test_pull_takes_one_model_at_a_time(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pull", "x-1", "--out", str(tmp_path / "m"), "--trial",
                                      "1", "--deployable"])
    assert result.exit_code == 2
    assert "--trial and --deployable name different models; give one of them" in result.output
