"""Opening the Optuna storage (storage/optuna_storage.py `optuna_storage`)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from storage.optuna_storage import optuna_storage


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_processes_opening_a_fresh_database_at_once_all_get_a_storage(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Optuna creates its tables in a fresh database (on PostgreSQL, a fresh schema) on first
    use: a driver, the dashboard and the API may all do so at the same moment, and none may
    fail (one created the tables; the others find them)."""
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'fresh.db'}")
    with ProcessPoolExecutor(8) as pool:
        studies = list(pool.map(_studies_in, [url] * 8))
    assert studies == [0] * 8


def _studies_in(url: str) -> int:
    return len(optuna_storage(url, retry_seconds=5).get_all_studies())



def test_a_process_opens_one_storage_per_url_and_a_forked_child_its_own(tmp_path: Path) -> None:
    """Every caller in a process (a driver's job, its bridge, its heartbeat) shares one engine
    and one trial cache per URL; a private one is asked for by name; a forked child never uses
    its parent's pooled connections."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    storage = optuna_storage(url)
    assert optuna_storage(url, retry_seconds=5) is storage
    assert optuna_storage(url, private=True) is not storage
    assert optuna_storage(f"sqlite:///{tmp_path / 'other.db'}") is not storage
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.submit(_opens_its_own, url, id(storage)).result()


def _opens_its_own(url: str, parents: int) -> bool:
    storage = optuna_storage(url)
    return id(storage) != parents and optuna_storage(url) is storage
