"""`retry` waits out a database that went away, and nothing else: a bad request is raised at
once, not retried for a minute and then reported as an outage."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.exceptions import StorageInternalError
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from storage.optuna_storage import optuna_storage, retry
from tests.support import proxy_to


def test_a_broken_constraint_is_raised_at_once(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE once (id INTEGER PRIMARY KEY)"))
        connection.execute(text("INSERT INTO once VALUES (1)"))

    def insert_again() -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO once VALUES (1)"))

    started = time.monotonic()
    with pytest.raises(IntegrityError, match="duplicate key"):
        retry(insert_again, what="insert a row")
    assert time.monotonic() - started < 5
    engine.dispose()


def test_a_value_optuna_cannot_store_is_raised_at_once(pg_url: str) -> None:
    """Optuna wraps the database's refusal (a study name over its 512 characters) in
    StorageInternalError, as it wraps a lost connection: its cause tells them apart."""
    storage = optuna_storage(pg_url)
    started = time.monotonic()
    with pytest.raises(StorageInternalError) as raised:
        retry(lambda: storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "x" * 600),
              what="create a study")
    assert time.monotonic() - started < 5
    assert "value too long" in str(raised.value.__cause__)


def test_an_outage_is_waited_out(pg_url: str) -> None:
    target = make_url(pg_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        engine = create_engine(proxy.url_for(pg_url), pool_pre_ping=True)

        def ask() -> int:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT 1")).scalar_one())

        assert ask() == 1
        proxy.cut()
        threading.Timer(2.0, proxy.restore).start()
        started = time.monotonic()
        assert retry(ask, what="ask", seconds=30) == 1
        assert time.monotonic() - started >= 1.5
        engine.dispose()
