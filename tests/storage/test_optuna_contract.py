"""What Optuna's storages and pruners promise, kept by the project's faster ones (the full check,
Optuna's own test suite against ours, is scripts/optuna_contract.py)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import (
    ArtifactMeta,
    FileSystemArtifactStore,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from automl.search._optuna import FastHyperbandPruner
from storage.optuna_storage import (
    artifact_record,
    optuna_storage,
    set_study_attrs,
    study_transaction,
)

DATABASES = ["postgresql", "sqlite"]


def _url(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if database == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.mark.parametrize("database", DATABASES)
def test_a_finished_trial_refuses_a_param_before_its_distribution_is_checked(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = optuna_storage(_url(database, tmp_path, request))
    study = optuna.create_study(storage=storage)
    first = study.ask()
    first.suggest_float("x", 0.0, 1.0)  # the study's cache now knows x's distribution
    study.tell(first, 1.0)
    finished = study.ask()
    study.tell(finished, 0.5)
    other_kind = CategoricalDistribution(["a", "b"])

    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_param(finished._trial_id, "x", 0, other_kind)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_param(finished._trial_id, "x", 0.5, FloatDistribution(0.0, 1.0))
    assert storage.get_trial(finished._trial_id).params == {}

    running = study.ask()  # a running trial is refused for the distribution itself
    with pytest.raises(ValueError, match="Cannot set different distribution kind") as refused:
        storage.set_trial_param(running._trial_id, "x", 0, other_kind)
    assert not isinstance(refused.value, UpdateFinishedTrialError)
    storage.set_trial_param(running._trial_id, "x", 0.25, FloatDistribution(0.0, 1.0))
    assert storage.get_trial(running._trial_id).params == {"x": 0.25}


@pytest.mark.parametrize("database", DATABASES)
def test_counting_the_trials_of_a_study_that_does_not_exist_raises_key_error(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = optuna_storage(_url(database, tmp_path, request))
    study = optuna.create_study(storage=storage, study_name="counted")
    empty = optuna.create_study(storage=storage, study_name="empty")
    for value in (0.1, 0.2):
        study.tell(study.ask(), value)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    study.ask()  # running

    count = storage.get_n_trials
    assert count(study._study_id) == 4
    assert count(study._study_id, TrialState.COMPLETE) == 2
    assert count(study._study_id, (TrialState.RUNNING, TrialState.PRUNED)) == 2
    assert count(study._study_id, TrialState.FAIL) == 0
    assert (count(empty._study_id), count(empty._study_id, TrialState.RUNNING)) == (0, 0)

    with pytest.raises(KeyError):
        count(study._study_id + empty._study_id + 1)
    optuna.delete_study(study_name="counted", storage=storage)  # e.g. deleted under its job
    with pytest.raises(KeyError):
        count(study._study_id)
    with pytest.raises(KeyError):
        count(study._study_id, TrialState.RUNNING)


def _attribute_names(view: optuna.Study) -> set[str]:
    """Every attribute a study has, its instance's own included (read past any whitelist)."""
    return set(dir(optuna.Study)) | set(object.__getattribute__(view, "__dict__"))


def _refusal(view: optuna.Study, name: str) -> str | None:
    """The AttributeError's message reading `name` from the view, or None if it may be read."""
    try:
        getattr(view, name)
    except AttributeError as error:
        return str(error)
    return None


@pytest.mark.parametrize("database", DATABASES)
def test_the_bracket_view_refuses_what_optunas_view_refuses_and_no_more(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The view shares the real study's storage: `optimize` on it ran trials on the real study
    without end, and `tell` or `set_user_attr` would write to it."""
    storage = optuna_storage(_url(database, tmp_path, request))
    options: dict[str, Any] = {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    study = optuna.create_study(storage=storage, pruner=FastHyperbandPruner(**options))
    ours = FastHyperbandPruner(**options)._create_bracket_study(study, 0)
    optunas = optuna.pruners.HyperbandPruner(**options)._create_bracket_study(study, 0)

    for name in ("optimize", "ask", "tell", "enqueue_trial", "set_user_attr", "user_attrs", "trials"):
        assert _refusal(ours, name) == _refusal(optunas, name), name
    with pytest.raises(AttributeError, match="_BracketStudy does not have attribute of 'optimize'"):
        ours.optimize(lambda trial: 1.0, n_trials=1)
    names = _attribute_names(ours) | _attribute_names(optunas) | {"no_such_attribute"}
    assert {n: _refusal(ours, n) for n in names} == {n: _refusal(optunas, n) for n in names}
    assert ours.get_trials() == [] and ours.study_name == study.study_name
    assert study.trials == []  # nothing ran on the real study


def _search(pruner: optuna.pruners.BasePruner, storage: optuna.storages.BaseStorage | None,
            trials: int = 30, epochs: int = 9) -> list[tuple[int, float, int | None]]:
    """A seeded search through ask / report / should_prune / tell; what it sampled and pruned."""
    study = optuna.create_study(study_name="same-name", direction="maximize", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=3), pruner=pruner)
    rng = random.Random(0)
    decided = []
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        ceiling, speed = rng.uniform(0.4, 0.95), rng.uniform(0.3, 1.5)
        pruned_at = None
        for epoch in range(1, epochs + 1):
            trial.report(ceiling * (1 - math.exp(-speed * epoch)), epoch)
            if epoch < epochs and trial.should_prune():
                pruned_at = epoch
                break
        if pruned_at is None:
            study.tell(trial, ceiling)
        else:
            study.tell(trial, state=TrialState.PRUNED)
        decided.append((trial.number, lr, pruned_at))
    return decided


@pytest.mark.parametrize("database", DATABASES)
def test_hyperband_through_the_guarded_view_decides_as_optunas_own(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    storage = optuna_storage(_url(database, tmp_path, request))

    decided = _search(FastHyperbandPruner(**options), storage)

    assert decided == _search(optuna.pruners.HyperbandPruner(**options), None)
    assert {1, 3, None} <= {epoch for _, _, epoch in decided}  # both rungs pruned, some ran out


@pytest.mark.parametrize("database", DATABASES)
def test_study_attributes_set_in_one_transaction_are_what_optuna_reads(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """How a publication registers its files: Optuna's artifact listing (and so
    optuna-dashboard's) and a study's user attributes read them through the trial cache, and
    a transaction that fails registers none of them."""
    storage = optuna_storage(_url(database, tmp_path, request))
    study = optuna.create_study(storage=storage)
    store = FileSystemArtifactStore(str(tmp_path))
    (tmp_path / "old.txt").write_text("old")
    old = upload_artifact(artifact_store=store, file_path=str(tmp_path / "old.txt"),
                          study_or_trial=study)
    key, value = artifact_record("1234-abcd", "README.md")
    with study_transaction(storage) as session:
        set_study_attrs(session, study._study_id, user={"manifest": {"README.md": 1}},
                        system={key: value}, drop_system=[artifact_record(old, "old.txt")[0]])
    assert get_all_artifact_meta(study) == [
        ArtifactMeta(artifact_id="1234-abcd", filename="README.md", mimetype="text/markdown",
                     encoding=None)]
    assert study.user_attrs["manifest"] == {"README.md": 1}

    with pytest.raises(RuntimeError), study_transaction(storage) as session:
        set_study_attrs(session, study._study_id, user={"manifest": {}},
                        system=dict([artifact_record("5678", "model.safetensors")]))
        raise RuntimeError("a failure before the commit")
    assert study.user_attrs["manifest"] == {"README.md": 1}
    assert [m.artifact_id for m in get_all_artifact_meta(study)] == ["1234-abcd"]
