"""A whole search job on real local Ray + real Optuna, against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from huggingface_hub import ModelCard
from optuna.trial import TrialState
from ray import tune
from typer.testing import CliRunner

from automl.cli import app
from automl.errors import JobError
from automl.jobs.driver import run_job
from automl.jobs.outcome import JobOutcome
from automl.search.spec import parse_spec
from automl.settings import Settings
from storage.optuna_storage import optuna_storage
from tests.support import AUTOML, DIGITS_JOB, misfit_weights, serve_onnx, trial_folders
from workers.predict import evaluate_checkpoint, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
OPTUNA_CLI = str(Path(sys.executable).with_name("optuna"))


@dataclass
class Ran:
    outcome: JobOutcome
    settings: Settings
    study: optuna.Study
    left_in_tmpdir: set[Path]  # trial folders the job left behind


def run(tmp: Path, database_url: str | None = None, **changes: Any) -> Ran:
    spec = parse_spec({**DIGITS_JOB, **changes})
    settings = Settings(home=tmp / "automl-data", database_url=database_url)
    job_id = f"{spec.name}-{tmp.name[-6:]}".replace("_", "-")
    before = trial_folders()
    outcome = run_job(spec, job_id, settings)
    study = optuna.load_study(study_name=job_id, storage=optuna_storage(settings.storage_url))
    return Ran(outcome, settings, study, trial_folders() - before)


@pytest.fixture(scope="module")
def sqlite_job(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    tmp = tmp_path_factory.mktemp("sqlite")
    return run(tmp, checkpoints={"keep_trials": 1}, evaluation={"corruptions": True, "seed": 3},
               tracking={"mlflow": f"sqlite:///{tmp}/mlflow.db", "experiment": "digits"})


def test_job_succeeds_with_pruned_and_complete_trials(sqlite_job: Ran) -> None:
    outcome, study = sqlite_job.outcome, sqlite_job.study
    assert outcome.state == "succeeded", outcome.error
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert states.count(TrialState.PRUNED) >= 1
    assert study.best_trial.state == TrialState.COMPLETE
    assert study.best_trial.number == outcome.best_trial
    assert outcome.best_value is not None and outcome.best_value > 0.8


def test_trials_leave_nothing_in_tmpdir(sqlite_job: Ran) -> None:
    """Completed and pruned trials alike: a working folder left behind holds the trial's model
    and optimizer state, gigabytes for a large backbone, for every trial."""
    assert {t.state for t in sqlite_job.study.trials} >= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sqlite_job.left_in_tmpdir == set()


def test_a_finished_job_keeps_checkpoints_of_its_best_trials_only(sqlite_job: Ran) -> None:
    """Left to itself, Ray Tune keeps every trial's best and latest checkpoint, optimizer state
    and all, forever. Here a pruned trial's go when it ends, and of the complete trials the
    `keep_trials` best (1 here) keep one each: their best epoch's model, without the optimizer
    state."""
    run_dir = sqlite_job.settings.runs_path / sqlite_job.outcome.job_id
    checkpoints = {ray_trial.trial_id: sorted(Path(ray_trial.path).glob("checkpoint_*"))
                   for ray_trial in tune.ExperimentAnalysis(str(run_dir)).trials}
    by_number = {t.number: checkpoints[t.user_attrs["ray_trial_id"]] for t in sqlite_job.study.trials}
    complete = sorted((t for t in sqlite_job.study.trials if t.state == TrialState.COMPLETE),
                      key=lambda t: -float(t.value or 0))
    assert len(complete) > 1, "the job must have more complete trials than it keeps"
    kept = {number for number, folders in by_number.items() if folders}
    assert kept == {complete[0].number}
    for number in kept:
        (folder,) = by_number[number]  # one checkpoint: the best epoch's
        assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json"}
        assert not (folder / "optimizer.safetensors").exists()
    pruned = [t.number for t in sqlite_job.study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(not by_number[n] for n in pruned)
    assert sqlite_job.outcome.best_trial in kept


def test_pruned_trials_stopped_early_and_were_never_complete(sqlite_job: Ran) -> None:
    for trial in sqlite_job.study.trials:
        epochs = len(trial.intermediate_values)
        if trial.state == TrialState.PRUNED:
            assert epochs < 3  # Optuna records a pruned trial's last report as its value
            assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
        elif trial.state == TrialState.COMPLETE:
            assert epochs == 3
            assert trial.value == max(trial.intermediate_values.values())


def test_optuna_and_ray_tune_count_the_same_trials(sqlite_job: Ran) -> None:
    path = sqlite_job.settings.runs_path / sqlite_job.outcome.job_id
    ray_trials = tune.ExperimentAnalysis(str(path)).trials
    optuna_trials = sqlite_job.study.trials
    assert len(ray_trials) == len(optuna_trials)
    assert {t.trial_id for t in ray_trials} == {
        t.user_attrs["ray_trial_id"] for t in optuna_trials
    }
    # each Optuna trial ran the configuration Ray Tune was given
    by_id = {t.trial_id: t.config for t in ray_trials}
    for trial in optuna_trials:
        assert by_id[trial.user_attrs["ray_trial_id"]]["lr"] == trial.params.get(
            "lr", trial.user_attrs["config"]["lr"]
        )


def test_mlflow_holds_the_job_as_a_run_with_each_trial_nested_in_it(sqlite_job: Ran) -> None:
    import mlflow

    uri = sqlite_job.study.user_attrs["spec"]["tracking"]["mlflow"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["digits"], output_format="list")
    (job,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    outcome = sqlite_job.outcome
    assert job.info.run_name == outcome.job_id and job.info.status == "FINISHED"
    assert job.data.tags["automl.state"] == "succeeded"
    assert job.data.tags["automl.best_trial"] == str(outcome.best_trial)
    assert job.data.params["budget.n_trials"] == "8"
    assert job.data.metrics["test_accuracy"] == outcome.test_metrics["test_accuracy"]
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(job.info.run_id)}
    assert {"README.md", "confusion_matrix.png", "evaluation.html", "evaluation.json",
            "reliability.png", "robustness.png"} <= artifacts
    assert job.data.metrics["test_ece"] == outcome.test_metrics["test_ece"]

    trials = {int(r.data.tags["automl.trial"]): r for r in runs if r is not job}
    assert sorted(trials) == [t.number for t in sqlite_job.study.trials]  # one run each
    client = mlflow.MlflowClient(uri)
    for trial in sqlite_job.study.trials:
        tracked = trials[trial.number]
        assert tracked.data.tags["mlflow.parentRunId"] == job.info.run_id
        assert tracked.data.params["lr"] == json.dumps(trial.user_attrs["config"]["lr"])
        history = client.get_metric_history(tracked.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in history} == trial.intermediate_values  # every epoch
        if trial.state == TrialState.PRUNED:
            assert tracked.data.tags["automl.state"] == "pruned"
            assert tracked.data.tags["automl.pruned_at_epoch"] == str(max(trial.intermediate_values))
            assert tracked.info.status == "KILLED"
        else:
            assert trial.state == TrialState.COMPLETE
            assert tracked.data.tags["automl.state"] == "complete"
            assert tracked.info.status == "FINISHED"


def test_an_unusable_tracking_store_stops_the_job_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    spec = parse_spec({**DIGITS_JOB, "tracking": {"mlflow": "http://127.0.0.1:9"}})
    settings = Settings(home=tmp_path / "automl-data")
    with pytest.raises(JobError, match=r"cannot use the MLflow tracking store http://127.0.0.1:9: "
                       r".*; start the server, fix tracking.mlflow"):
        run_job(spec, "untracked", settings)
    assert not Path(settings.storage_url.removeprefix("sqlite:///")).exists()  # nothing stored


def test_a_dataset_too_big_for_the_cache_is_refused_before_anything_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trial would have refused to decode it; the job says so once, with the numbers."""
    monkeypatch.setenv("AUTOML_CACHE_DIR", str(tmp_path / "cache"))  # nothing decoded yet
    monkeypatch.setenv("AUTOML_CACHE_MAX_GB", "0.001")  # 1 MB; digits at 33 px take 5.9 MB
    space = {**DIGITS_JOB["space"], "img_size": [32, 48]}  # stored at 33 and 50 px
    settings = Settings(home=tmp_path / "automl-data")
    with pytest.raises(JobError, match=r"^dataset: the decoded-image cache needs 19\.3 MB for "
                       r"1,797 images at 33x33 \+ 50x50 px .* over its budget of 1\.0 MB "
                       r"\(AUTOML_CACHE_MAX_GB=0.001.*; raise AUTOML_CACHE_MAX_GB"):
        run_job(parse_spec({**DIGITS_JOB, "space": space}), "too-big", settings)
    assert not Path(settings.storage_url.removeprefix("sqlite:///")).exists()
    assert not list((tmp_path / "cache").glob("decoded/*"))  # not half-written either


def test_optuna_cli_reads_the_same_study(sqlite_job: Ran) -> None:
    url, name = sqlite_job.settings.storage_url, sqlite_job.outcome.job_id
    best = subprocess.run(
        [OPTUNA_CLI, "best-trial", "--study-name", name, "--storage", url, "-f", "json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(best.stdout)["number"] == sqlite_job.outcome.best_trial
    trials = subprocess.run(
        [OPTUNA_CLI, "trials", "--study-name", name, "--storage", url, "-f", "json"],
        capture_output=True, text=True, check=True,
    )
    assert len(json.loads(trials.stdout)) == 8


def test_pulled_checkpoint_predicts_with_the_recorded_test_accuracy(
    sqlite_job: Ran, tmp_path: Path
) -> None:
    settings, job_id = sqlite_job.settings, sqlite_job.outcome.job_id
    runner = CliRunner()
    pulled = runner.invoke(app, [
        "pull", job_id, "--out", str(tmp_path / "model"),
        "--storage", settings.storage_url, "--artifacts", settings.artifacts_path,
    ])
    assert pulled.exit_code == 0, pulled.output
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "automl.json", "README.md",
            "confusion_matrix.png"} <= files
    recorded = sqlite_job.study.user_attrs["test_metrics"]["test_accuracy"]
    assert recorded == sqlite_job.outcome.test_metrics["test_accuracy"]
    card = ModelCard.load(tmp_path / "model" / "README.md")  # the Hub's own reader, offline
    assert card.data.library_name == "timm"
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores["accuracy"] == pytest.approx(recorded)
    measured = evaluate_checkpoint(load_checkpoint(tmp_path / "model"), "test")
    assert measured["test_accuracy"] == pytest.approx(recorded, abs=1e-6)
    # the job's evaluation of it: its page and charts, its summary on the card, its temperature
    assert {"evaluation.json", "evaluation.html", "reliability.png", "robustness.png"} <= files
    evaluation = json.loads((tmp_path / "model" / "evaluation.json").read_text())
    assert evaluation["metrics"]["accuracy"] == pytest.approx(recorded)
    assert evaluation["checkpoint"] == f"{job_id} trial {sqlite_job.outcome.best_trial}"
    assert evaluation["split"] == "test" and evaluation["images"] == measured["test_images"]
    assert evaluation["robustness"]["seed"] == 3  # the job's evaluation settings
    worst = evaluation["worst_errors"]
    assert worst and all(e["true"] != e["predicted"] for e in worst)
    assert all("/" not in e["path"] for e in worst)  # no runner's folder in a publication
    drop = evaluation["robustness"]["mean_relative_drop"]
    assert drop == sqlite_job.outcome.test_metrics["test_mean_corruption_drop"]
    temperature = evaluation["calibration"]["temperature"]
    assert json.loads((tmp_path / "model" / "automl.json").read_text())["temperature"] == temperature
    assert load_checkpoint(tmp_path / "model").temperature == temperature
    assert "## Evaluation (test split" in card.text
    assert f"at temperature {temperature:.3f}" in card.text and f"{drop:.1%}" in card.text
    image = next(Path(load_checkpoint(tmp_path / "model").config.data.source).glob("*"), None)
    assert image is None  # builtin:digits is not a path; predict on a real PNG instead
    from workers.data.sources import load_index

    index = load_index(load_checkpoint(tmp_path / "model").config.data)
    png = index.paths[int(index.split_indices["test"][0])]
    predicted = runner.invoke(app, ["predict", "--checkpoint", str(tmp_path / "model"), str(png)])
    assert predicted.exit_code == 0, predicted.output
    row = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert row["label"] in [str(d) for d in range(10)] and 0 < row["probability"] <= 1
    # at the fitted temperature: the raw probabilities' logits / T, the same label
    raw = runner.invoke(app, ["predict", "--checkpoint", str(tmp_path / "model"), str(png),
                              "--uncalibrated", "--top", "10"])
    assert raw.exit_code == 0, raw.output
    ranked = json.loads(raw.stdout.strip().splitlines()[-1])["top"]
    assert ranked[0]["label"] == row["label"]
    logits = torch.log(torch.tensor([max(r["probability"], 1e-12) for r in ranked]))
    assert row["probability"] == pytest.approx(
        float((logits / temperature).softmax(0)[0]), abs=1e-3)
    # a folder: every image under it, in order, each predicted as it would be alone
    folder = runner.invoke(app, ["predict", "--checkpoint", str(tmp_path / "model"),
                                 str(png.parent)])
    assert folder.exit_code == 0, folder.output
    rows = [json.loads(line) for line in folder.stdout.strip().splitlines()]
    assert [r["image"] for r in rows] == sorted(str(p) for p in png.parent.glob("*.png"))
    assert next(r for r in rows if r["image"] == str(png)) == row
    exported = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "model"),
                                   "--out", str(tmp_path / "model.onnx")])
    assert exported.exit_code == 0, exported.output
    assert serve_onnx(tmp_path / "model.onnx", [png]).argmax() == int(row["label"])


def test_unknown_job_id_is_refused(sqlite_job: Ran, tmp_path: Path) -> None:
    settings = sqlite_job.settings
    result = CliRunner().invoke(app, [
        "pull", "no-such-job", "--out", str(tmp_path / "m"),
        "--storage", settings.storage_url, "--artifacts", settings.artifacts_path,
    ])
    assert result.exit_code == 2
    assert "unknown job id 'no-such-job'" in result.output
    assert not (tmp_path / "m").exists()


def test_pull_from_the_wrong_artifact_store_names_the_fix(sqlite_job: Ran, tmp_path: Path) -> None:
    settings = sqlite_job.settings
    elsewhere = tmp_path / "other-artifacts"
    result = CliRunner().invoke(app, [
        "pull", sqlite_job.outcome.job_id, "--out", str(tmp_path / "m"),
        "--storage", settings.storage_url, "--artifacts", str(elsewhere),
    ])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert f"is not in the artifact store {elsewhere}" in text
    assert "point --artifacts (or AUTOML_ARTIFACTS) at the store the job wrote to" in text
    assert not (tmp_path / "m").exists() and not elsewhere.exists()
    prefixed = CliRunner().invoke(app, [  # a job to pull, so nothing stops before the store
        "pull", sqlite_job.outcome.job_id, "--out", str(tmp_path / "m"),
        "--storage", settings.storage_url, "--artifacts", "s3://acme/models",
    ])
    assert prefixed.exit_code == 2 and "Traceback" not in prefixed.output, prefixed.output
    assert "--artifacts / AUTOML_ARTIFACTS: s3://acme/models is not an artifact store" in " ".join(
        prefixed.output.split())


def test_same_job_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    ran = run(
        tmp_path,
        database_url=pg_url,
        budget={"n_trials": 4, "max_epochs": 2},
        strategy={"seed": 1, "warm_start": True},  # the defaults: TPE + Hyperband, portfolio
    )
    assert ran.outcome.state == "succeeded", ran.outcome.error
    assert len(ran.study.trials) == 4
    assert all(t.state.is_finished() for t in ran.study.trials)
    assert ran.study.user_attrs["best_trial"] == ran.study.best_trial.number
    best = subprocess.run(
        [OPTUNA_CLI, "best-trial", "--study-name", ran.outcome.job_id, "--storage", pg_url,
         "-f", "json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(best.stdout)["number"] == ran.outcome.best_trial


def test_more_gpus_than_the_cluster_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    from automl.errors import JobError

    spec = parse_spec({**DIGITS_JOB, "resources": {"cpu": 1, "gpu": 1}})
    settings = Settings(home=tmp_path / "automl-data")
    with pytest.raises(JobError, match=r"asks for 1 CPU and 1 GPU, but the largest Ray node has 2 CPU"):
        run_job(spec, "gpu-job", settings)
    assert not (tmp_path / "automl-data").exists()


def test_run_refused_for_resources_leaves_no_job_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**DIGITS_JOB, "resources": {"cpu": 64}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2
    assert "lower `resources` in the job spec" in " ".join(result.output.split())
    listed = CliRunner().invoke(app, ["list"])
    assert listed.exit_code == 0 and "0 of 0 job(s)" in listed.output, listed.output


def test_a_time_limit_shorter_than_an_epoch_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**DIGITS_JOB, "budget": {"n_trials": 2, "time_limit": "1s"}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 1
    assert ("no trial completed; the time limit (1 s) ran out before any trial finished an "
            "epoch: raise budget.time_limit") in " ".join(result.output.split())


def test_database_down_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(DIGITS_JOB))
    monkeypatch.chdir(tmp_path)
    down = "postgresql+psycopg2://postgres@127.0.0.1:5999/test"
    result = CliRunner().invoke(app, ["run", str(job), "--storage", down])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "could not" in text and "postgresql+psycopg2://postgres@127.0.0.1:5999/test" in text
    assert "Connection refused" in text
    assert "check that it is running" in text


def fill_hub_cache(home: Path, backbones: list[str]) -> None:
    """A Hugging Face cache as `huggingface_hub` lays it out, with weights written here (random:
    nothing is downloaded), for machines that have no route to the hub."""
    import safetensors.torch
    import timm

    for name in backbones:
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        root = home / "hub" / f"models--{repo.replace('/', '--')}"
        revision = "0" * 40
        (root / "snapshots" / revision).mkdir(parents=True)
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text(revision)
        model = timm.create_model(name, pretrained=False)
        safetensors.torch.save_file(model.state_dict(), root / "snapshots" / revision / "model.safetensors")


def test_an_unreachable_model_hub_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pretrained weights that no machine can fetch: one line at once, naming the fix, instead
    of minutes of the hub client's retries in every trial. Nothing is stored."""
    from huggingface_hub import constants

    fill_hub_cache(tmp_path / "hf", ["test_resnet.r160_in1k"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    space = {**DIGITS_JOB["space"], "pretrained": True,
             "backbone": ["test_resnet.r160_in1k", "test_efficientnet.r160_in1k"]}
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**DIGITS_JOB, "space": space}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(job)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "pretrained weights cannot be fetched: http://127.0.0.1:9 did not answer" in text
    # the cached backbone is not named; the one without weights is, with where it looked (by
    # its setting: the error is also a job's, read over HTTP, where the server's paths are not)
    assert "1 of the space's backbones (test_efficientnet.r160_in1k)" in text
    assert "Hugging Face cache (HF_HOME)" in text and "space.pretrained: false" in text
    assert str(tmp_path / "hf") not in text
    listed = CliRunner().invoke(app, ["list"])
    assert "0 of 0 job(s)" in listed.output, listed.output
    # every backbone's weights in the cache: the job may start (the hub is not asked at all)
    fill_hub_cache(tmp_path / "hf", ["test_efficientnet.r160_in1k"])
    from automl.jobs.preflight import check_pretrained_weights

    check_pretrained_weights(parse_spec(json.loads(job.read_text())))


def test_a_filled_hub_cache_runs_pretrained_jobs_offline(tmp_path: Path) -> None:
    """The fix the error above names: the trials load their pretrained weights from a filled
    Hugging Face cache on a machine with no route to the hub."""
    fill_hub_cache(tmp_path / "hf", ["test_resnet.r160_in1k"])
    space = {**DIGITS_JOB["space"], "pretrained": True}
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**DIGITS_JOB, "budget": {"n_trials": 2, "max_epochs": 1},
                               "space": space}))
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data"),
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_AUTH_MODE", None)
    result = subprocess.run([AUTOML, "run", str(job), "--ray-address", "local"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout and "2 complete" in result.stdout


def test_trials_that_all_fail_stop_the_job_with_one_line_each(tmp_path: Path) -> None:
    """Every trial fails the same way before an epoch (here: weights whose shapes do not fit
    the backbone, which only building the model finds; seen with workers that cannot reach the
    model hub): the job stops after 3 of its 6 trials instead of failing them all, and its
    error says why once."""
    space = {**DIGITS_JOB["space"], "pretrained": str(misfit_weights(tmp_path))}
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**DIGITS_JOB, "budget": {"n_trials": 6, "max_epochs": 1},
                               "max_failures": 0, "space": space}))
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data"), "AUTOML_MLFLOW_URI": mlflow_uri}
    env.pop("RAY_AUTH_MODE", None)  # this process's own Ray set it: a user's shell has none
    before = trial_folders()
    result = subprocess.run([AUTOML, "run", str(job), "--ray-address", "local"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert trial_folders() - before == set()  # neither the failed trials' nor any Tune stopped
    error = next(line for line in result.stdout.splitlines() if line.startswith("error:"))
    assert error.count("size mismatch for conv1.0.weight") == 1, error  # the same error, once
    assert "stopped after the first 3 trials failed before an epoch" in error
    # each failed trial is one line that says where its traceback is, not 80 lines of Ray frames
    failed = [line for line in result.stderr.splitlines() if "Trial task failed" in line]
    assert len(failed) == 3 and all("size mismatch" in line for line in failed)
    assert "error.txt" in failed[0] and "Traceback" not in result.stderr
    # Ray's default (token authentication) chosen explicitly: no warning about it on every run
    assert "Token authentication" not in result.stderr + result.stdout
    # in MLflow, each failed trial's run says with what, and the job's run why it failed
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["automl"], output_format="list")
    trials = [r for r in runs if "automl.trial" in r.data.tags]
    (job_run,) = [r for r in runs if "automl.trial" not in r.data.tags]
    # the 3 that failed, and any Tune had started before it stopped the job (told FAIL)
    assert len(trials) >= 3 and all(r.info.status == "FAILED" for r in trials)
    assert all(r.data.tags["automl.state"] == "failed" for r in trials)
    assert sum("size mismatch for conv1.0.weight" in r.data.tags["automl.error"]
               for r in trials) >= 3
    assert job_run.info.status == "FAILED" and job_run.data.tags["automl.state"] == "failed"
    assert "stopped after the first 3 trials failed" in job_run.data.tags["automl.error"]


def test_workers_without_the_hub_name_the_fix() -> None:
    """Workers that cannot fetch weights while the driver could (the check above passed)."""
    from automl.jobs.outcome import failure_hint as _hint

    offline = "huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying"
    assert "set space.pretrained: false" in _hint([offline])


def test_failures_stop_the_job_only_before_any_epoch() -> None:
    """Three trials failing before any epoch stop the job (nothing will work); once a trial got
    through an epoch, failures are the configurations' and the search goes on."""
    from automl.tune.stopper import JobStopper

    broken = JobStopper("broken-env", "val_accuracy", None, True)
    JobStopper.register("broken-env")
    for _ in range(2):
        JobStopper.trial_failed("broken-env")
    assert not broken.stop_all()
    JobStopper.trial_failed("broken-env")
    assert broken.stop_all() and broken.reason == "failing"

    working = JobStopper("some-bad-configs", "val_accuracy", None, True)
    JobStopper.register("some-bad-configs")
    JobStopper.trial_failed("some-bad-configs")
    working("trial-1", {"val_accuracy": 0.5, "epoch": 1})
    for _ in range(5):
        JobStopper.trial_failed("some-bad-configs")
    assert not working.stop_all()


def test_out_of_gpu_memory_failures_name_the_fix() -> None:
    """The error of a job whose trials all ran out of GPU memory (no GPU here to make one run
    out, so the message is built from the error line Ray reports)."""
    from automl.jobs.outcome import failure_hint as _hint

    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "narrow space.batch_size or space.img_size" in _hint([oom])
    assert _hint(["ValueError: something else"]) == ""
