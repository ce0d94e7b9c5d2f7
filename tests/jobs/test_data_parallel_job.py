"""A whole job whose trials are 2-worker data-parallel groups (Ray Train, gloo) on the suite's
local Ray (2 CPUs): it completes, every epoch of every trial reaches the study once, and no
group's placement group or folder outlives the job; a group the cluster cannot hold is refused
before anything is stored."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.util import placement_group_table

from automl.errors import JobError
from automl.jobs.driver import run_job
from automl.search.spec import parse_spec
from automl.settings import Settings
from automl.tune.experiment import GROUPS_FOLDER
from storage.optuna_storage import optuna_storage
from tests.support import DIGITS_JOB, assert_budget_met_once, assert_only_kept_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_a_job_of_two_worker_trials_completes_with_each_epoch_once(tmp_path: Path) -> None:
    spec = parse_spec({
        **DIGITS_JOB,
        "budget": {"n_trials": 2, "max_epochs": 2},
        "max_concurrent_trials": 1,
        "resources": {"workers": 2, "cpu": 0.5},
        "strategy": {"seed": 0, "warm_start": False, "pruner": "none"},
        "space": {**DIGITS_JOB["space"], "lr": 0.003, "freeze_stages": 0},
    })
    settings = Settings(home=tmp_path / "automl-data")
    outcome = run_job(spec, "ddp-job", settings)
    assert outcome.state == "succeeded", outcome.error
    study = optuna.load_study(study_name="ddp-job", storage=optuna_storage(settings.storage_url))
    assert_budget_met_once(study, 2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2]
    assert outcome.best_value is not None and outcome.best_value > 0.7
    run_folder = settings.runs_path / "ddp-job"
    assert_only_kept_checkpoints(study, run_folder)
    assert list((run_folder / GROUPS_FOLDER).iterdir()) == []
    assert [pg for pg, info in placement_group_table().items()
            if info["state"] != "REMOVED" and len(info["bundles"]) > 1] == []


def test_a_group_larger_than_the_cluster_is_refused_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    spec = parse_spec({**DIGITS_JOB, "resources": {"workers": 8, "cpu": 0.5}})
    settings = Settings(home=tmp_path / "automl-data")
    with pytest.raises(JobError, match=r"^each trial is a group of 8 workers of 0.5 CPU and 0 "
                       r"GPU \(4 CPU and 0 GPU at once\), but the cluster's 1 node\(s\), 2 CPU"):
        run_job(spec, "too-big", settings)
    assert not (tmp_path / "automl-data").exists()
