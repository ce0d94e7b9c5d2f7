"""What a user gets wrong at the command line gets one clear line (exit 2), never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from automl.cli import app
from workers.config import TrialConfig
from workers.train.loop import train

JOB = {"name": "cli-errors", "dataset": {"source": "builtin:digits"},
       "budget": {"n_trials": 1, "max_epochs": 1}}


def refused(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    return " ".join(result.output.split())  # rich may wrap long lines


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("notaurl", "not a database URL; use sqlite:///"),
        ("postgres://u@h/db", "unsupported database 'postgres'; use sqlite:///"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
    ],
)
def test_a_bad_database_url_is_named(url: str, message: str) -> None:
    assert message in refused("list", "--storage", url)


def test_an_s3_artifact_store_with_a_prefix_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optuna's S3 store takes a bucket only: the setting is refused as such, by any command,
    before a job would run to its end and fail to publish."""
    monkeypatch.chdir(tmp_path)
    fix = "s3://acme/models is not an artifact store: S3 takes a bucket only, give s3://acme"
    assert f"--artifacts / AUTOML_ARTIFACTS: {fix}" in refused(
        "pull", "some-job", "--artifacts", "s3://acme/models", "--out", "model")
    monkeypatch.setenv("AUTOML_ARTIFACTS", "s3://acme/models")
    assert f"--artifacts / AUTOML_ARTIFACTS: {fix}" in refused("list")
    assert not (tmp_path / "automl-data").exists()


def test_pull_names_a_job_that_has_nothing_to_pull_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the embedded default: ./automl-data
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    submitted = CliRunner().invoke(app, ["submit", str(job)])
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert f"job {job_id} is queued: it has no published best trial yet" in refused(
        "pull", job_id, "--out", "model")
    (tmp_path / "afile").write_text("x")
    assert "--out afile is a file; give a directory" in refused("pull", job_id, "--out", "afile")
    assert not (tmp_path / "model").exists()


def test_a_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    config = TrialConfig.from_dict({"backbone": "test_resnet", "img_size": 32, "epochs": 1})
    checkpoint = train(config, tmp_path / "trial").best_checkpoint
    assert checkpoint is not None
    image = tmp_path / "x.png"
    image.write_bytes(b"not read")
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"\xff" * 64)
    assert "model.safetensors is damaged" in refused("predict", "--checkpoint", str(checkpoint),
                                                      str(image))
    (checkpoint / "config.json").write_text("{")
    assert "config.json is damaged" in refused("predict", "--checkpoint", str(checkpoint),
                                               str(image))
    (tmp_path / "empty").mkdir()
    assert f"{tmp_path / 'empty'} has no images" in refused(
        "predict", "--checkpoint", str(checkpoint), str(tmp_path / "empty"))
    assert "no such image file or folder" in refused(
        "predict", "--checkpoint", str(checkpoint), str(tmp_path / "nowhere.png"))
    (checkpoint / "config.json").write_text("{}")
    assert "not an automl checkpoint" in refused("predict", "--checkpoint", str(checkpoint),
                                                 str(image))


def test_pickled_weights_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    """weights_only refuses them (they would run code): that refusal is the user's to fix."""
    import pickle

    import torch

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": print}))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\xff" * 64)
    listed = tmp_path / "list.pth"  # loads (plain containers), but is no state dict: timm's
    torch.save([1, 2, 3], listed)  # AttributeError, with its traceback, on every trial
    for weights, message in ((evil, "pickled objects that are not tensors"),
                             (damaged, "cannot be read"),
                             (listed, "hold a list, not a state dict")):
        said = refused("train-one", "--dataset", "builtin:digits", "--backbone", "test_resnet",
                       "--epochs", "1", "--set", f"pretrained={weights}", "--set", "img_size=32")
        assert message in said, said


def test_a_job_id_no_job_can_have_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    assert "is not one: lowercase letters, digits and dashes" in refused(
        "run", str(job), "--job-id", "My Job")
    assert not (tmp_path / "automl-data").exists()


def test_a_taken_port_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        assert f"cannot listen on 127.0.0.1:{port}" in refused("dashboard", "--port", port)
        assert "choose another with --dashboard-port" in refused(
            "serve", "--port", "0", "--dashboard-port", port)


def test_status_watch_prints_the_final_panel_once_when_piped(tmp_path: Path) -> None:
    from automl.search.spec import parse_spec
    from automl.settings import Settings
    from storage.jobs import JobStore

    settings = Settings(home=tmp_path / "automl-data")
    store = JobStore(settings.storage_url)
    store.submit("piped-1", "piped", parse_spec(JOB).model_dump(mode="json"), state="running")
    store.finish("piped-1", "succeeded")
    automl = str(Path(sys.executable).with_name("automl"))
    result = subprocess.run(
        [automl, "status", "piped-1", "--watch"],
        env={**os.environ, "AUTOML_HOME": str(settings.home)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("job piped-1: succeeded") == 1, result.stdout


def test_list_prints_each_job_on_one_whole_line_when_piped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "name": "a-long-experiment-name-for-the-list"}))
    job_id = CliRunner().invoke(app, ["submit", str(job)]).stdout.strip().splitlines()[-1]
    listed = CliRunner().invoke(app, ["list"])  # not a terminal: rich would wrap at 80 columns
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if job_id in line)
    assert line.split()[1:4] == ["queued", "0/0/0", "of"] and "…" not in listed.output
    assert len(line) > 80


def published_without_manifest(tmp_path: Path) -> tuple[Any, Any, list[str]]:
    """A study published the way jobs were before publications recorded a manifest: each file
    uploaded through Optuna's artifact API. Returns its storage, its store, and the names."""
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from automl.jobs.pull import CHECKPOINT_FILES
    from automl.search.keys import BEST_TRIAL

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(storage=storage, study_name="job-1")
    study.set_user_attr(BEST_TRIAL, 0)
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    files = tmp_path / "files"
    files.mkdir()
    names = [*CHECKPOINT_FILES, "automl.json"]
    for name in names:
        (files / name).write_text(name)
        upload_artifact(artifact_store=store, file_path=str(files / name), study_or_trial=study)
    return storage, store, names


def test_pull_writes_nothing_outside_its_folder(tmp_path: Path) -> None:
    """An artifact whose name climbs out of the folder (set in the database by hand, or by a
    dashboard upload) is skipped; the checkpoint itself is pulled."""
    import io
    import json

    from automl.jobs.pull import pull

    storage, store, names = published_without_manifest(tmp_path)
    meta = {"artifact_id": "evil", "filename": "../../escape.txt", "mimetype": "text/plain",
            "encoding": None}
    storage.set_study_system_attr(storage.get_study_id_from_name("job-1"), "artifacts:evil",
                                  json.dumps(meta))
    store.write("evil", io.BytesIO(b"gotcha"))
    out = tmp_path / "deep" / "model"
    pull(storage, str(tmp_path / "artifacts"), "job-1", out)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert not list(tmp_path.rglob("escape.txt"))


def test_a_job_published_without_a_manifest_and_a_name_taken_twice_names_the_fix(
    tmp_path: Path
) -> None:
    """Nothing tells which of the two is the job's: pull refuses, rather than taking either
    (or failing on the second with a server error)."""
    import optuna
    from optuna.artifacts import upload_artifact

    from automl.errors import PullError
    from automl.jobs.pull import pull

    storage, store, _ = published_without_manifest(tmp_path)
    other = tmp_path / "upload" / "config.json"
    other.parent.mkdir()
    other.write_text("{}")
    upload_artifact(artifact_store=store, file_path=str(other),
                    study_or_trial=optuna.load_study(study_name="job-1", storage=storage))
    with pytest.raises(PullError, match=r"job 'job-1' was published without a manifest, and its "
                       r"study holds more than one config\.json .*: delete the ones that are not "
                       r"the job's in the dashboard, or publish the job again"):
        pull(storage, str(tmp_path / "artifacts"), "job-1", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_push_without_network_is_one_line_naming_the_hub_and_the_fix(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import optuna

    from automl.jobs.publish import publish
    from automl.jobs.pull import CHECKPOINT_FILES
    from automl.search.keys import BEST_TRIAL as BEST_TRIAL_ATTR

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(storage=url, study_name="job-1")
    files = tmp_path / "files"
    files.mkdir()
    for name in [*CHECKPOINT_FILES, "automl.json"]:
        (files / name).write_text(name)
    publish(study, str(tmp_path / "artifacts"), files, {BEST_TRIAL_ATTR: 0})
    automl = str(Path(sys.executable).with_name("automl"))
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}
    flags = ["--storage", url, "--artifacts", str(tmp_path / "artifacts")]

    def push(*args: str) -> str:
        done = subprocess.run([automl, "push", "job-1", *args, *flags], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        return done.stderr

    assert "cannot reach the Hugging Face Hub at http://127.0.0.1:9" in push("--repo", "me/digits")
    assert "is not OWNER/NAME" in push("--repo", "digits")
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("automl-push-*"))
