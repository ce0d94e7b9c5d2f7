"""The per-job process (automl/jobs/process.py): a stored job run by its driver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from automl.jobs.process import execute_job, start_foreground
from automl.search.spec import parse_spec
from automl.settings import Settings
from storage.jobs import JobStore
from tests.support import DIGITS_JOB, TINY_SPACE, backbone_weights, count_spec_work


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_job_opens_one_optuna_storage_in_its_driver_process(
    tmp_path: Path, color_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver, its bridge (unpickled by Ray Tune) and its heartbeat share one storage: one
    engine, one connection pool, one trial cache. Counted as Optuna's own storages made for the
    job's database, by any path (`optuna.load_study(storage=URL)` included)."""
    opened: list[str] = []

    class Counted(optuna.storages.RDBStorage):
        def __init__(self, url: str, *args: Any, **kwargs: Any) -> None:
            opened.append(url)
            super().__init__(url, *args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Counted)
    settings = Settings(home=tmp_path / "automl-data")
    store = JobStore(settings.storage_url)
    spec = parse_spec({"name": "colors", "dataset": {"source": str(color_folder)},
                       "budget": {"n_trials": 2, "max_epochs": 1}, "max_concurrent_trials": 1,
                       "resources": {"cpu": 1},
                       "strategy": {"seed": 0, "warm_start": False, "pruner": "none"},
                       "space": TINY_SPACE})
    job_id, _, _ = start_foreground(store, spec, None)

    outcome = execute_job(job_id, settings, store, spec=spec)

    assert outcome.state == "succeeded", outcome.error
    assert store.get(job_id).n_complete == 2
    assert opened == [settings.storage_url]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_claimed_job_validates_its_stored_spec_and_checks_its_weights_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """As a runner's driver runs it: the stored spec is validated once (its space built, every
    override checked), its weights file judged under the dataset roots and loaded once."""
    space = {**DIGITS_JOB["space"], "pretrained": str(backbone_weights(tmp_path))}
    spec = parse_spec({**DIGITS_JOB, "space": space, "max_concurrent_trials": 1,
                       "budget": {"n_trials": 1, "max_epochs": 1}})
    settings = Settings(home=tmp_path / "automl-data", database_url=pg_url,
                        dataset_roots=(tmp_path,))
    store = JobStore(settings.storage_url)
    store.submit("counted-job", spec.name, spec.model_dump(mode="json"))
    claimed = store.claim("test-runner")
    assert claimed is not None and claimed.id == "counted-job"
    with count_spec_work(monkeypatch) as counts:
        outcome = execute_job("counted-job", settings, store, hand_back=True,
                              dataset_roots=settings.dataset_roots)
    assert outcome.state == "succeeded", outcome.error
    assert counts == {"validated": 1, "space built": 1, "override checked": len(space),
                      "weights checked": 1}
