"""A whole job whose trials are 2-worker data-parallel groups (Ray Train, gloo) on the suite's
local Ray (2 CPUs): the bridge prunes one, the rest complete, every epoch of every trial
reaches the study once, and no group's placement group or folder outlives the job; a group the
cluster cannot hold is refused before anything is stored."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.util import placement_group_table

from automl.errors import JobError
from automl.jobs.driver import run_job
from automl.search import keys
from automl.search.spec import parse_spec
from automl.settings import Settings
from automl.tune.experiment import GROUPS_FOLDER
from storage.optuna_storage import optuna_storage
from tests.support import DIGITS_JOB, assert_budget_met_once, assert_only_kept_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def test_a_job_of_two_worker_trials_prunes_and_completes_with_each_epoch_once(
    tmp_path: Path,
) -> None:
    """Through the job's own bridge: the groups measure their costs under a limit, train with a
    frozen stage, layer decay and mixup, and the median pruner stops the trial that cannot learn
    (lr 1e-7) after its first epoch, group and all; the rest complete, every epoch once, only
    the kept checkpoint left and no placement group."""
    spec = parse_spec({
        **DIGITS_JOB,
        "objective": {"metric": "val_accuracy", "limits": {"params_m": 10}},
        "budget": {"n_trials": 3, "max_epochs": 2},
        "max_concurrent_trials": 1,
        "resources": {"workers": 2, "cpu": 0.5},
        "checkpoints": {"keep_trials": 1},
        "strategy": {"seed": 0, "warm_start": False, "pruner": "median",
                     "pruner_options": {"n_startup_trials": 1, "n_warmup_steps": 0}},
        "space": {**DIGITS_JOB["space"], "freeze_stages": 1, "layer_decay": 0.8,
                  "mixup_alpha": 0.2, "augment": "basic"},
    })
    settings = Settings(home=tmp_path / "automl-data")
    outcome = run_job(spec, "ddp-job", settings)
    assert outcome.state == "succeeded", outcome.error
    study = optuna.load_study(study_name="ddp-job", storage=optuna_storage(settings.storage_url))
    assert_budget_met_once(study, 3)
    states = {t.number: t.state for t in study.trials}
    assert sorted(states.values(), key=str) == sorted(
        [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED], key=str), states
    for trial in study.trials:
        pruned = trial.state == TrialState.PRUNED
        assert sorted(trial.intermediate_values) == ([1] if pruned else [1, 2])
        assert 0 < trial.user_attrs[keys.COSTS]["params_m"] < 10
    assert outcome.best_value is not None and outcome.best_value > 0.2  # learned: chance is 0.1
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
