"""Engine, sessions and schema migrations for the jobs database.

One URL configures everything: PostgreSQL when deployed, a SQLite file when embedded. Migrations
(alembic) are applied on start by whichever process starts first; on PostgreSQL an advisory lock
keeps two processes starting together from racing.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from optuna.exceptions import StorageInternalError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.optuna_storage import (
    DatabaseUnavailable,
    engine_kwargs,
    ensure_sqlite_parent,
    is_outage,
    redact,
    retry,
)

# What a call may raise when the database is away (restarting, unreachable); Optuna wraps
# every SQLAlchemy error, a bad request's included, in StorageInternalError: see
# `storage.optuna_storage.is_outage`, which tells the two apart (and which `retry` uses).
DATABASE_ERRORS = (DatabaseUnavailable, StorageInternalError, OperationalError, InterfaceError)

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "automl_alembic_version"
_LOCK_KEY = 0x6175746F6D6C  # "automl"


@functools.cache
def engine_for(url: str) -> Engine:
    ensure_sqlite_parent(url)
    engine = create_engine(url, **engine_kwargs(url))
    if make_url(url).get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.close()

    return engine


def database_answers(url: str) -> bool:
    """Whether the database answers now (one `SELECT 1`): False in an outage; any other error
    (a bug, a refused login) is raised."""
    try:
        with engine_for(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except DATABASE_ERRORS as error:
        if not is_outage(error):
            raise
        return False
    return True


def sessions(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


_MIGRATED: set[tuple[int, str]] = set()  # (process id, URL): the schemas this process checked
_MIGRATING = threading.Lock()


def migrate(url: str, retry_seconds: float = 30.0) -> None:
    """Bring the jobs schema to the latest revision, once per process: the first call reads the
    schema's revision (one query), and only a schema behind it is upgraded, under the lock; the
    process's later calls do nothing (every `JobStore` calls this, even `automl list`'s)."""
    key = (os.getpid(), url)
    with _MIGRATING:
        if key in _MIGRATED:
            return
        _migrate(url, retry_seconds)
        _MIGRATED.add(key)


def _migrate(url: str, retry_seconds: float) -> None:
    engine = engine_for(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("version_table", VERSION_TABLE)

    def upgrade() -> None:
        with engine.begin() as connection:
            if _at_head(connection):
                return
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")  # reads the revision again, under the lock

    retry(upgrade, what=f"migrate the jobs schema in {redact(url)}", seconds=retry_seconds)


@functools.cache
def _head() -> tuple[str, ...]:
    """The latest revision of the jobs schema, from the migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return tuple(ScriptDirectory.from_config(config).get_heads())


def _at_head(connection: Connection) -> bool:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return set(context.get_current_heads()) == set(_head())
