"""The Optuna storage for a job's study: one URL, PostgreSQL deployed or SQLite embedded.

Only the driver (the job's runner) talks to it; workers report to Ray Tune and need no database
credentials. Connections are checked before use (pool_pre_ping), so a restarted database costs one
reconnect, not a failed job; `retry` covers the call that was in flight when it went away.

The storage is Optuna's RDBStorage behind Optuna's own trial cache (`_CachedStorage`, what
`optuna.load_study(storage=RDBStorage)` wraps it in anyway): finished trials never change, so each
is read from the database once per process, and later reads fetch only new and running trials.
Returning the wrapped storage lets every study loaded from it share that cache: `automl serve`
(GET /jobs/{id}/trials), the dashboard and `automl pull` used to re-read a 10,000-trial study in
full, some 10 s, on every request. The price: a long-lived process keeps every finished trial of
every study it has read in memory (about 300 MB for 10,000 trials of the default space).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import StorageInternalError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

T = TypeVar("T")
log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The database did not answer within the retry window; the message names the URL."""


def engine_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # one writer at a time: wait for the lock instead of failing at once
        return {"connect_args": {"timeout": 60}, "pool_pre_ping": True}
    return {"pool_pre_ping": True, "pool_size": 8, "max_overflow": 16, "pool_recycle": 1800}


def ensure_sqlite_parent(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def optuna_storage(url: str, retry_seconds: float = 60.0) -> optuna.storages.BaseStorage:
    ensure_sqlite_parent(url)

    def connect() -> optuna.storages.RDBStorage:
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
        except IntegrityError:
            # Two processes created Optuna's tables in a fresh database at the same moment
            # (e.g. `automl serve` and `automl runner` starting together): the tables exist now.
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))

    rdb = retry(connect, what=f"connect to {redact(url)}", seconds=retry_seconds)
    return optuna.storages.get_storage(rdb)  # the RDBStorage in Optuna's trial cache


def retry(fn: Callable[[], T], *, what: str, seconds: float = 60.0) -> T:
    """Call `fn`, retrying with backoff while the database is unreachable."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return fn()
        except (StorageInternalError, OperationalError, DBAPIError) as error:
            reason = _reason(error)
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(
                    f"could not {what}: the database did not answer for {seconds:.0f}s ({reason}); "
                    "check that it is running and the URL is right"
                ) from error
            log.warning("database unavailable (%s); retrying in %.1fs", reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _reason(error: Exception) -> str:
    """The driver's own first line ("connection refused"), not SQLAlchemy's wrapping."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def redact(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
