"""The distill stage on digits: the search's best model teaches the student that fits the
limits, in a study of its own, and the deployable student (float, and int8 when it passes) is
published beside the search's best. test_resnet has 0.37 M parameters, test_efficientnet 0.10 M:
a params_m limit of 0.2 lets only the latter be the student."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from automl.errors import JobError, SpecError
from automl.jobs.driver import distill_job, run_job
from automl.jobs.outcome import JobOutcome
from automl.search import keys
from automl.search.spec import parse_spec
from automl.service.api import create_app
from automl.settings import Settings
from storage.optuna_storage import optuna_storage
from tests.support import AUTOML, DIGITS_JOB
from workers.config import DataConfig
from workers.data.sources import load_index
from workers.predict import load_checkpoint, predict_images

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
TEACHER, STUDENT = "test_resnet.r160_in1k", "test_efficientnet.r160_in1k"


def job(**changes: Any) -> dict[str, Any]:
    return {**DIGITS_JOB, "name": "distill", "budget": {"n_trials": 3, "max_epochs": 2},
            "space": {**DIGITS_JOB["space"], "backbone": [TEACHER, STUDENT], "freeze_stages": 0,
                      "lr": 0.003},
            "distill": {"limits": {"params_m": 0.2}, "trials": 2, "epochs": 2}, **changes}


def study_of(settings: Settings, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna_storage(settings.storage_url))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, JobOutcome]:
    home = tmp_path_factory.mktemp("distill")
    settings = Settings(home=home / "automl-data", mlflow_uri=f"sqlite:///{home}/mlflow.db")
    outcome = run_job(parse_spec(job()), "distill-1", settings)
    assert outcome.state == "succeeded" and outcome.error is None, outcome.error
    return settings, outcome


def test_a_distill_stage_publishes_a_student_that_fits_the_limits_and_predicts(
    distilled: tuple[Settings, JobOutcome], tmp_path: Path
) -> None:
    settings, outcome = distilled
    stage = study_of(settings, "distill-1-distill")
    # student trials are real trials of their own study, searching the distillation
    assert len(stage.trials) == 2
    assert all(t.state == TrialState.COMPLETE for t in stage.trials)
    for trial in stage.trials:
        config = trial.user_attrs[keys.CONFIG]
        assert config["backbone"] == STUDENT
        assert Path(config["teacher"]).name == "distill-1-teacher"
        assert {"distill_temperature", "distill_alpha", "lr"} <= set(trial.params)
        assert trial.intermediate_values  # val_accuracy each epoch, as search trials do
    # the staged teacher copy is gone once the stage ended
    assert not (settings.runs_path / "distill-1-teacher").exists()

    done = subprocess.run([AUTOML, "pull", "distill-1", "--deployable", "--out",
                           str(tmp_path / "deployable"), "--storage", settings.storage_url,
                           "--artifacts", settings.artifacts_path],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "deployable"
    meta = json.loads((folder / "automl.json").read_text())
    assert meta["trial_config"]["backbone"] == STUDENT
    assert meta["costs"]["params_m"] <= 0.2
    assert (folder / "model.onnx").is_file()
    summary = outcome.deployable
    assert summary is not None
    assert (folder / "model.int8.onnx").is_file() == summary["int8"]["kept"]
    models = [row["model"] for row in summary["rows"]]
    assert models == ["teacher", "student alone", "distilled student", "int8 student"]
    teacher = summary["rows"][0]
    assert teacher["backbone"] == TEACHER and teacher["trial"] == outcome.best_trial
    assert teacher["params_m"] > 0.2  # the search's best breaks the student's limit
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n")  # still a Hub card, the comparison after its front matter
    assert "## Deployable model: the distilled student" in card
    assert "| teacher | distill-1#" in card and "| distilled student | distill-1-distill#" in card
    images = list(load_index(DataConfig(source="builtin:digits")).files[:8])
    predictions = predict_images(load_checkpoint(folder), images)
    assert len(predictions) == 8 and all(0 < p.probability <= 1 for p in predictions)
    # the search's own publication is untouched
    parent = study_of(settings, "distill-1")
    assert parent.user_attrs[keys.BEST_TRIAL] == outcome.best_trial
    assert parent.user_attrs[keys.DEPLOYABLE]["study"] == "distill-1-distill"


def test_the_student_alone_is_the_searchs_best_trial_that_fits(
    distilled: tuple[Settings, JobOutcome],
) -> None:
    settings, outcome = distilled
    assert outcome.deployable is not None
    alone = outcome.deployable["rows"][1]
    parent = study_of(settings, "distill-1")
    fitting = [t for t in parent.trials if t.state == TrialState.COMPLETE
               and t.user_attrs[keys.COSTS]["params_m"] <= 0.2]
    if not fitting:
        assert alone["trial"] is None
        return
    best = max(fitting, key=lambda t: t.values[0])
    assert alone["trial"] == best.number and alone["backbone"] == STUDENT
    assert alone["test_accuracy"] is not None  # its checkpoint was kept to be scored


def test_distillation_trials_nest_under_the_jobs_run_in_mlflow(
    distilled: tuple[Settings, JobOutcome],
) -> None:
    import mlflow

    settings, _ = distilled
    mlflow.set_tracking_uri(settings.mlflow_uri)
    runs = mlflow.search_runs(experiment_names=["automl"], output_format="list")
    by_job = {r.data.tags["automl.job"]: r for r in runs if "automl.trial" not in r.data.tags}
    stage_run = by_job["distill-1-distill"]
    assert stage_run.data.tags["mlflow.parentRunId"] == by_job["distill-1"].info.run_id
    students = [r for r in runs if r.data.tags.get("automl.job") == "distill-1-distill"
                and "automl.trial" in r.data.tags]
    assert len(students) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in students} == {stage_run.info.run_id}


def test_the_deployable_model_is_served_by_the_api(distilled: tuple[Settings, JobOutcome],
                                                     tmp_path: Path) -> None:
    settings, _ = distilled
    with TestClient(create_app(settings)) as client:
        response = client.get("/jobs/distill-1/deployable/checkpoint")
        assert response.status_code == 200, response.text
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            names = set(tar.getnames())
        assert {"model.safetensors", "model.onnx", "README.md", "automl.json"} <= names


def test_a_failed_distill_stage_leaves_the_searchs_result_published(
    distilled: tuple[Settings, JobOutcome],
) -> None:
    settings, _ = distilled
    parent = study_of(settings, "distill-1")
    published = dict(parent.user_attrs[keys.PUBLISHED_FILES])
    deployable = dict(parent.user_attrs[keys.DEPLOYABLE])
    again = distill_job("distill-1", settings, job(), {"teacher_trial": 99})
    assert again.state == "succeeded"
    assert again.error is not None and again.error.startswith(
        "the distill stage failed: distill.teacher_trial: trial 99 of job distill-1 has no kept "
        "checkpoint (trials with one: ")
    assert "retry the stage with `automl distill distill-1`" in again.error
    parent = study_of(settings, "distill-1")
    assert parent.user_attrs[keys.PUBLISHED_FILES] == published
    assert parent.user_attrs[keys.DEPLOYABLE] == deployable


def test_a_named_student_over_the_limits_is_refused_before_anything_runs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    spec = parse_spec(job(distill={"limits": {"params_m": 0.2}, "student": TEACHER}))
    with pytest.raises(JobError, match=(
            r"^distill.student: test_resnet.r160_in1k at 32 px does not fit: params_m 0.374 over "
            r"distill.limits.params_m 0.2; name a smaller student or raise the limit$")):
        run_job(spec, "refused-1", settings)
    assert optuna.get_all_study_names(optuna_storage(settings.storage_url)) == []


def test_auto_is_refused_when_even_the_cheapest_backbone_breaks_the_limits(
        tmp_path: Path) -> None:
    spec = parse_spec(job(distill={"limits": {"params_m": 0.05}}))
    with pytest.raises(JobError, match=(
            r"^distill.student: test_efficientnet.r160_in1k at 32 px does not fit: params_m "
            r"0.102 over distill.limits.params_m 0.05; raise the limit, add a smaller backbone")):
        run_job(spec, "refused-2", Settings(home=tmp_path))


@pytest.mark.parametrize(("distill", "message"), [
    ({"student": "resnet_nope"}, "distill.student: unknown backbone 'resnet_nope'"),
    ({"student": "auto"}, "distill.student: auto picks the student that fits the target, and "
                          "there is none: set distill.limits"),
    ({"limits": {"gpu_hours": 1}}, "distill.limits.gpu_hours: unknown cost"),
    ({"limits": {"latency_ms": 5}, "trials": 0}, "distill.trials: Input should be greater"),
])
def test_a_distill_section_that_cannot_run_is_refused_naming_the_field(
        distill: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(job(distill=distill))
    assert message in str(refused.value)


def test_auto_falls_back_on_the_cheapest_backbone_that_fits_not_the_fewest_macs() -> None:
    """test_convnext has the fewest MACs at 32 px but 0.21 M parameters: under a 0.15 M limit
    the student is test_efficientnet (0.10 M)."""
    from automl.jobs.distill import cheapest_backbone, check_students

    backbones = [TEACHER, STUDENT, "test_convnext.r160_in1k"]
    spec = parse_spec(job(space={**job()["space"], "backbone": backbones},
                          distill={"limits": {"params_m": 0.15}}))
    assert cheapest_backbone(spec, 10) == STUDENT
    check_students(spec, 10)  # not refused: one backbone fits
