"""Opening the Optuna storage (storage/optuna_storage.py `optuna_storage`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from storage.optuna_storage import optuna_storage


def test_processes_opening_a_fresh_database_at_once_all_get_a_storage(pg_url: str) -> None:
    """Optuna creates its tables in a fresh database (here a fresh schema) on first use: a
    driver, the dashboard and the API may all do so at the same moment, and none may fail on
    PostgreSQL's catalog (one created the tables; the others find them)."""
    with ThreadPoolExecutor(8) as pool:
        storages = list(pool.map(lambda _: optuna_storage(pg_url, retry_seconds=5), range(8)))
    assert len(storages) == 8
    assert all(s.get_all_studies() == [] for s in storages)
