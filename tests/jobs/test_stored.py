"""The per-job process (`python -m automl.jobs.stored JOB`), run in this process."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.jobs.stored import execute_job
from automl.search.spec import parse_spec
from automl.settings import Settings
from storage.jobs import JobStore
from tests.support import DIGITS_JOB, backbone_weights, count_spec_work

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


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
