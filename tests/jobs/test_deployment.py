"""Deployment-aware jobs on digits: limits on a configuration's costs, and a Pareto front of
accuracy against latency, pruned by Pareto rank. The three test backbones differ in size:
test_resnet 0.37 M parameters, test_convnext 0.21 M, test_efficientnet 0.10 M."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from automl.cli.render import LiveView
from automl.errors import JobError
from automl.jobs.driver import run_job
from automl.search import keys
from automl.search.spec import parse_spec
from automl.settings import Settings
from storage.optuna_storage import optuna_storage
from tests.support import AUTOML, DIGITS_JOB
from workers.predict import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
BACKBONES = ["test_resnet.r160_in1k", "test_convnext.r160_in1k", "test_efficientnet.r160_in1k"]


def job(name: str, objective: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**DIGITS_JOB, "name": name, "objective": objective,
            "space": {**DIGITS_JOB["space"], "backbone": BACKBONES, "freeze_stages": 0},
            **changes}


def study_of(settings: Settings, job_id: str) -> optuna.Study:
    return optuna.load_study(study_name=job_id, storage=optuna_storage(settings.storage_url))


def test_a_params_limit_never_trains_a_backbone_over_it(tmp_path: Path) -> None:
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = Settings(home=tmp_path / "automl-data", mlflow_uri=mlflow_uri)
    spec = parse_spec(job("limits", {"limits": {"params_m": 0.25}},
                          budget={"n_trials": 6, "max_epochs": 2}))
    view = LiveView("limits-1", n_trials=6, maximize=True, metric="val_accuracy")
    outcome = run_job(spec, "limits-1", settings, events=view)
    assert outcome.state == "succeeded", outcome.error
    study = study_of(settings, "limits-1")
    over = [t for t in study.trials if t.user_attrs[keys.CONFIG]["backbone"] == BACKBONES[0]]
    assert over, "the sampler must have picked the backbone over the limit"
    # once measured over the limit, the backbone is not drawn again: only trials started
    # before the first measurement came back (2 at once) may have it
    assert len(over) <= spec.max_concurrent_trials
    assert {view.rows[t.number].note for t in over} == {"params_m 0.3737 > 0.25"}
    for trial in over:  # recorded with the value and the limit it broke, never trained
        assert trial.state == TrialState.PRUNED and trial.intermediate_values == {}
        assert trial.user_attrs[keys.OVER_LIMIT] == {"params_m": [pytest.approx(0.3737, abs=1e-3),
                                                                  0.25]}
    assert all(t.user_attrs[keys.COSTS]["params_m"] > 0 for t in study.trials)
    # in MLflow too: each trial's costs, and which limit cut the ones that never trained
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    runs = {int(r.data.tags["automl.trial"]): r
            for r in mlflow.search_runs(experiment_names=["automl"], output_format="list")
            if "automl.trial" in r.data.tags}
    for trial in study.trials:
        tracked = runs[trial.number]
        assert tracked.data.metrics["params_m"] == trial.user_attrs[keys.COSTS]["params_m"]
        if trial.number in {t.number for t in over}:
            assert tracked.data.tags["automl.state"] == "over_limit"
            assert json.loads(tracked.data.tags["automl.over_limit"]) == trial.user_attrs[keys.OVER_LIMIT]
    best = study.trials[outcome.best_trial or 0]
    assert best.user_attrs[keys.CONFIG]["backbone"] != BACKBONES[0]
    pulled = tmp_path / "model"
    done = subprocess.run([AUTOML, "pull", "limits-1", "--out", str(pulled), "--storage",
                           settings.storage_url, "--artifacts", settings.artifacts_path],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    published = json.loads((pulled / "automl.json").read_text())
    assert published["costs"]["params_m"] <= 0.25  # what was published fits


def test_a_limit_no_choice_meets_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "automl-data")
    spec = parse_spec(job("nofit", {"limits": {"params_m": 0.05}}))
    with pytest.raises(JobError, match=r"no configuration of the space meets the limits: the "
                                       r"smallest params_m, test_efficientnet.r160_in1k at 32 px"):
        run_job(spec, "nofit-1", settings)
    assert optuna.get_all_study_names(optuna_storage(settings.storage_url)) == []


def test_a_two_objective_job_prunes_and_yields_a_front_you_can_pull(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "automl-data")
    spec = parse_spec(job(
        "front", {"metrics": ["val_accuracy", "latency_ms"]},
        budget={"n_trials": 10, "max_epochs": 3},
        strategy={"seed": 0, "warm_start": False, "pruner_options": {"min_resource": 1}},
    ))
    outcome = run_job(spec, "front-1", settings)
    assert outcome.state == "succeeded", outcome.error
    study = study_of(settings, "front-1")
    assert study.metric_names == ["val_accuracy", "latency_ms"]  # the dashboard's names
    assert len(study.directions) == 2
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.intermediate_values for t in pruned)  # cut by rank, after an epoch
    for trial in study.trials:  # each trial's curve is where the dashboard draws it from
        if trial.state == TrialState.COMPLETE:
            assert sorted(trial.intermediate_values) == [1, 2, 3]
            assert trial.values[1] == trial.user_attrs[keys.COSTS]["latency_ms"]
    front = study.user_attrs[keys.FRONT]
    assert front and {m["trial"] for m in front} == {t.number for t in study.best_trials}
    assert all("test_accuracy" in m["test_metrics"] for m in front)  # scored on test, once

    # from the folder holding automl-data, as a user of the embedded default runs them
    listed = subprocess.run([AUTOML, "pareto", "front-1", "--json"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    members = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [m["trial"] for m in members] == [m["trial"] for m in front]
    other = members[-1]["trial"]  # the fastest end of the front, not the published best
    pulled = tmp_path / "fast"
    done = subprocess.run([AUTOML, "pull", "front-1", "--trial", str(other), "--out", str(pulled)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(pulled).config.backbone == members[-1]["backbone"]
    assert json.loads((pulled / "automl.json").read_text())["test_metrics"] == members[-1]["test_metrics"]
    exported = subprocess.run([AUTOML, "export", "--checkpoint", str(pulled), "--out",
                               str(tmp_path / "fast.onnx")], capture_output=True, text=True,
                              timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert "ms on cpu-b1-t1-onnxruntime" in exported.stdout  # its latency on the job's target

    from fastapi.testclient import TestClient

    from automl.service.api import create_app

    with TestClient(create_app(settings)) as client:  # the same front over HTTP
        served = client.get("/jobs/front-1/pareto")
    assert served.status_code == 200, served.text
    assert [m["trial"] for m in served.json()["members"]] == [m["trial"] for m in front]
