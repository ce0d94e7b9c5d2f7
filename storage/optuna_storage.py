"""The Optuna storage for a job's study: one URL, PostgreSQL deployed or SQLite embedded.

Only the driver (the job's runner) talks to it; workers report to Ray Tune and need no database
credentials. Connections are checked before use (pool_pre_ping), so a restarted database costs one
reconnect, not a failed job; `retry` covers the call that was in flight when it went away.

The storage is Optuna's RDBStorage behind Optuna's own trial cache (`_CachedStorage`, what
`optuna.load_study(storage=RDBStorage)` wraps it in anyway): finished trials never change, so each
is read from the database once per process, and later reads fetch only new and running trials
(`TrialCache` below skips even those where a question needs none of them).
Returning the wrapped storage lets every study loaded from it share that cache, so the
dashboard and `automl pull` do not re-read a large study in full per request. The price: a
process keeps every finished trial of every study it has read in memory (docs/benchmarks.md has
the size), which is why `automl serve` opens one storage for its API and its dashboard, and
pages trials from the database itself (`trial_page`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Collection, Container, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.artifacts import ArtifactMeta
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
)
from optuna.exceptions import StorageInternalError
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Float,
    and_,
    case,
    cast,
    create_engine,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.pool import NullPool

T = TypeVar("T")
log = logging.getLogger(__name__)

# Every private Optuna name used here (see automl/search/_optuna.py for the rest): a callable's
# dotted path -> its parameters, or a class's dotted path -> the attributes it must have.
# tests/search/test_optuna_private_names.py checks each against the installed Optuna.
_CACHED = "optuna.storages._cached_storage._CachedStorage"
# what a FrozenTrial is built from beside the trial's own row (relationships of TrialModel)
_TRIAL_PARTS = ("params", "values", "user_attributes", "system_attributes", "intermediate_values")
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    f"{_CACHED}.__init__": ("self", "backend"),
    f"{_CACHED}.get_all_trials": ("self", "study_id", "deepcopy", "states"),
    f"{_CACHED}.set_trial_param":
        ("self", "trial_id", "param_name", "param_value_internal", "distribution"),
    f"{_CACHED}.set_trial_intermediate_value": ("self", "trial_id", "step", "intermediate_value"),
    f"{_CACHED}.set_trial_system_attr": ("self", "trial_id", "key", "value"),
    f"{_CACHED}.set_trial_user_attr": ("self", "trial_id", "key", "value"),
    f"{_CACHED}.get_trial_system_attrs": ("self", "trial_id"),
    f"{_CACHED}.get_n_trials": ("self", "study_id", "state"),
    "optuna.storages._rdb.models.TrialIntermediateValueModel.intermediate_value_to_stored_repr":
        ("value",),
    "optuna.storages._rdb.storage.RDBStorage._build_frozen_trial_from_trial_model":
        ("self", "trial"),
}
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    _CACHED: ("_lock", "_studies", "_backend", "_trial_id_to_study_id_and_number"),
    "optuna.storages._cached_storage._StudyInfo": ("param_distribution", "trials"),
    "optuna.storages._rdb.models.StudyModel": ("study_id",),
    "optuna.storages._rdb.models.TrialModel": ("trial_id", "study_id", "state", "number", *_TRIAL_PARTS),
    "optuna.storages._rdb.models.TrialParamModel":
        ("trial_id", "param_name", "param_value", "distribution_json"),
    "optuna.storages._rdb.models.TrialIntermediateValueModel":
        ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
    "optuna.storages._rdb.models.TrialSystemAttributeModel": ("trial_id", "key", "value_json"),
    "optuna.storages._rdb.models.TrialUserAttributeModel": ("trial_id", "key", "value_json"),
    "optuna.storages._rdb.models.StudyUserAttributeModel": ("study_id", "key", "value_json"),
    "optuna.storages._rdb.models.StudySystemAttributeModel": ("study_id", "key", "value_json"),
    # the study system attribute key prefix of Optuna's artifact records (`artifact_record`)
    "optuna.artifacts._upload": ("ARTIFACTS_ATTR_PREFIX",),
}


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


_SHARED: dict[tuple[int, str], optuna.storages.BaseStorage] = {}
_SHARING = threading.Lock()


def optuna_storage(
    url: str, retry_seconds: float = 60.0, *, private: bool = False
) -> optuna.storages.BaseStorage:
    """The process's storage for `url`: opened on first use, then the same one (one engine, one
    connection pool, one trial cache) for every caller in the process, such as a driver's job,
    its bridge and its heartbeat. Keyed by process id too: a forked child opens its own, never
    its parent's pooled connections. `private`: a storage of its own, shared with no one (what
    another process would see; tests look through one)."""
    if private:
        return _open(url, retry_seconds)
    key = (os.getpid(), url)
    with _SHARING:
        storage = _SHARED.get(key)
        if storage is None:
            storage = _SHARED[key] = _open(url, retry_seconds)
        return storage


def _open(url: str, retry_seconds: float) -> optuna.storages.BaseStorage:
    ensure_sqlite_parent(url)

    def connect() -> optuna.storages.RDBStorage:
        # Optuna creates its tables when they are missing, and two processes (or threads)
        # doing that at once in one fresh database collide (`automl serve` and `automl runner`
        # starting together, a poller beside a driver): one at a time, the later ones find
        # the tables made.
        with _schema_lock(url):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))

    rdb = retry(connect, what=f"connect to {redact(url)}", seconds=retry_seconds)
    return TrialCache(rdb)


_SCHEMA_LOCK = 0x6F7074756E61  # "optuna"


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """PostgreSQL: an advisory lock. SQLite: an exclusive `flock` of the database's folder.
    Not of the database file: closing any descriptor of that file drops every POSIX lock the
    process holds on it, SQLite's own included, and its readers then saw stale snapshots. An
    in-memory database has no other user."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            yield
            return
        folder = os.open(Path(parsed.database).expanduser().parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # and with it the lock
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK})
    finally:
        engine.dispose()


class TrialCache(_CachedStorage):
    """Optuna's trial cache, asking the database directly what it can answer without trials.

    `study.ask()` first looks for an enqueued (WAITING) trial. Through the cache that refreshes
    every running trial in full, with all its params, attributes and intermediate values, a cost
    per ask that grows with the trials running (`automl-bench storage`), to find, nearly always,
    none.
    The database answers "does any trial wait?" with one query.
    """

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        if states == (TrialState.WAITING,) and not self._backend.get_all_trials(
            study_id, deepcopy=False, states=states
        ):
            return []
        # some wait (a warm start's portfolio): the usual refresh puts them in the cache
        return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        """The distribution is checked against the one the study already holds for that name (a
        study's are all compatible, so any one will do), found in the cache; Optuna's own path
        takes a name no cached trial has (it asks the database).

        An incompatible distribution also goes Optuna's way, which looks at the trial first: a
        finished trial refuses any param with UpdateFinishedTrialError, whatever its distribution
        (the cache cannot tell a finished trial from a running one)."""
        with self._lock:
            study_id, _ = self._trial_id_to_study_id_and_number[trial_id]
            study = self._studies[study_id]
            known = study.param_distribution.get(param_name)
            if known is None:  # a study read before: its trials already hold the distribution
                known = next((t.distributions[param_name] for t in study.trials.values()
                              if param_name in t.distributions), None)
                if known is not None:
                    study.param_distribution[param_name] = known
        if known is None:
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        try:
            check_distribution_compatibility(known, distribution)
        except ValueError:
            # Optuna's path raises too (the cache holds `known`), after the trial's own checks
            return super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        row = {"param_name": param_name, "param_value": float(param_value_internal),
               "distribution_json": distribution_to_json(distribution)}
        if not self._insert_while_running(models.TrialParamModel, trial_id, "param_name", row):
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        value, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
            intermediate_value
        )
        row = {"step": step, "intermediate_value": value, "intermediate_value_type": kind}
        if not self._insert_while_running(models.TrialIntermediateValueModel, trial_id, "step", row):
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        row = {"key": key, "value_json": json.dumps(value)}
        if not self._insert_while_running(models.TrialSystemAttributeModel, trial_id, "key", row):
            super().set_trial_system_attr(trial_id, key, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        row = {"key": key, "value_json": json.dumps(value)}
        if not self._insert_while_running(models.TrialUserAttributeModel, trial_id, "key", row):
            super().set_trial_user_attr(trial_id, key, value)

    def _insert_while_running(
        self, model: Any, trial_id: int, key: str, row: dict[str, Any]
    ) -> bool:
        """One INSERT of `row` for the trial that lands only while the trial runs and holds no
        row with the same `key` column value yet; False if it did not land.

        Optuna's path reads the trial, checks its state, looks for the row, then writes it: up
        to four statements. A job writes ~16 parameters per ask and one value per epoch, so
        this is most of the database time of ask and report (`automl-bench storage`). When it
        does not land (the trial finished, or the key is there already) the caller takes
        Optuna's path, which raises Optuna's error or updates the row.
        """
        trial = models.TrialModel
        values = select(literal(trial_id), *(literal(v, type_=getattr(model, c).type)
                                             for c, v in row.items())).where(
            exists().where(trial.trial_id == trial_id, trial.state == TrialState.RUNNING),
            ~exists().where(model.trial_id == trial_id, getattr(model, key) == row[key]),
        )
        statement = insert(model).from_select(["trial_id", *row], values)
        with self._backend.engine.begin() as connection:
            return bool(connection.execute(statement).rowcount == 1)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """Two small queries; Optuna's default reads the whole trial. Pruners ask at every epoch."""
        return self._backend.get_trial_system_attrs(trial_id)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        """A COUNT in the database; Optuna's default lists (and refreshes) the trials to count them.

        The job heartbeat counts trials by state every 2 s, and warm start counts once per ask.
        The count joins the study's row, so a study that does not exist (deleted under a job)
        raises KeyError, as Optuna's storages do, where a bare count of its trials says 0.
        """
        study, trial = models.StudyModel, models.TrialModel
        joined = trial.study_id == study.study_id
        if state is not None:
            states = (state,) if isinstance(state, TrialState) else state
            joined = and_(joined, trial.state.in_(states))
        query = (
            select(func.count(trial.trial_id))
            .select_from(study)
            .outerjoin(trial, joined)
            .where(study.study_id == study_id)
            .group_by(study.study_id)
        )
        with self._backend.engine.connect() as connection:
            count = connection.execute(query).scalar_one_or_none()
        if count is None:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return int(count)


def artifact_record(artifact_id: str, filename: str) -> tuple[str, str]:
    """The study system attribute (key, value) by which Optuna lists an artifact of a study
    (`get_all_artifact_meta`, and optuna-dashboard's study page): what `upload_artifact`
    writes, without its upload."""
    mimetype, encoding = mimetypes.guess_type(filename)
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename,
                        mimetype=mimetype or "application/octet-stream", encoding=encoding)
    return ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(asdict(meta))


@contextmanager
def study_transaction(storage: optuna.storages.BaseStorage) -> Iterator[Session]:
    """A transaction on the storage's database, for `set_study_attrs`."""
    rdb = getattr(storage, "_backend", storage)
    assert isinstance(rdb, optuna.storages.RDBStorage)
    with Session(rdb.engine) as session, session.begin():
        yield session


def set_study_attrs(
    session: Session,
    study_id: int,
    *,
    user: Mapping[str, Any] | None = None,
    system: Mapping[str, Any] | None = None,
    drop_system: Collection[str] = (),
) -> None:
    """Set (or replace) a study's user and system attributes, and delete system attributes
    `drop_system`, all in the caller's transaction: Optuna writes each attribute in a
    transaction of its own, so several written its way can be seen (or left) half done.
    Study attributes are read from the database on every access (the trial cache keeps none),
    so every reader sees them once the transaction commits."""
    written: tuple[tuple[Any, Mapping[str, Any] | None], ...] = (
        (models.StudyUserAttributeModel, user), (models.StudySystemAttributeModel, system))
    for model, attrs in written:
        for key, value in (attrs or {}).items():
            row = session.scalars(
                select(model).where(model.study_id == study_id, model.key == key)
            ).one_or_none()
            if row is None:
                session.add(model(study_id=study_id, key=key, value_json=json.dumps(value)))
            else:
                row.value_json = json.dumps(value)
    if drop_system:
        system_attr = models.StudySystemAttributeModel
        session.execute(delete(system_attr).where(system_attr.study_id == study_id,
                                                  system_attr.key.in_(list(drop_system))))


def rank_among(
    storage: optuna.storages.BaseStorage,
    study_id: int,
    key: str,
    value: float,
    maximize: bool,
    exclude_trial_id: int,
) -> tuple[int, int] | None:
    """How many other trials of a study have the float system attribute `key`, and how many of
    them beat `value`; in one query. None if the storage is not relational.

    What successive halving needs at each rung (every trial's `completed_rung_k`). Reading it
    through `study.get_trials()` re-reads every running trial in full, with all its params,
    attributes and intermediate values, on every call (`automl-bench storage`). PostgreSQL
    counts in the database; other databases send the values, because SQLite reads the JSON text
    "Infinity" as 0.
    """
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        return None
    attr, trial = models.TrialSystemAttributeModel, models.TrialModel
    of_others = (
        select()
        .select_from(attr)
        .join(trial, trial.trial_id == attr.trial_id)
        .where(trial.study_id == study_id, attr.key == key, attr.trial_id != exclude_trial_id)
    )
    with rdb.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            number = cast(attr.value_json, Float)
            better = number > value if maximize else number < value
            total, n_better = connection.execute(
                of_others.add_columns(func.count(), func.count(case((better, 1))))
            ).one()
            return int(total), int(n_better)
        # float() reads what json.dumps writes for a float, NaN and Infinity included
        values = [float(v) for v in connection.execute(of_others.add_columns(attr.value_json)).scalars()]
    return len(values), sum(1 for v in values if (v > value if maximize else v < value))


def trial_page(
    storage: optuna.storages.BaseStorage, study_id: int, limit: int, offset: int
) -> tuple[list[FrozenTrial], int]:
    """One page of a study's trials in order of their numbers, and how many it has, read from
    the database itself: through the trial cache, a server paging through a 10,000-trial study
    would keep all of it in memory, for every study anyone looks at. A fixed 7 queries a page
    (the rows, then each part of all of them at once, as Optuna's own `get_all_trials` loads
    them), not 6 per trial."""
    rdb = getattr(storage, "_backend", storage)
    assert isinstance(rdb, optuna.storages.RDBStorage)
    trial = models.TrialModel
    of_study = trial.study_id == study_id
    page = (select(trial).where(of_study).order_by(trial.number).limit(limit).offset(offset)
            .options(*(selectinload(getattr(trial, part)) for part in _TRIAL_PARTS)))
    with Session(rdb.engine) as session:
        total = int(session.execute(select(func.count()).select_from(trial).where(of_study))
                    .scalar_one())
        rows = session.scalars(page).all()
        return [rdb._build_frozen_trial_from_trial_model(row) for row in rows], total


def is_outage(error: BaseException) -> bool:
    """Whether `error` says the database is away, rather than that a request was bad (a value
    it cannot store, a broken constraint): only an outage is worth waiting out. Optuna wraps
    every SQLAlchemy error, a bad request's included, in StorageInternalError: its cause says."""
    if isinstance(error, DatabaseUnavailable | OperationalError | InterfaceError):
        return True
    if isinstance(error, DBAPIError):  # SQLAlchemy's judgement of the driver's error
        return error.connection_invalidated
    cause = error.__cause__
    return isinstance(error, StorageInternalError) and cause is not None and is_outage(cause)


def retry(fn: Callable[[], T], *, what: str, seconds: float = 60.0) -> T:
    """Call `fn`, retrying with backoff while the database is unreachable; any other database
    error (a bad request: a broken constraint, a value too long) is raised at once."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return fn()
        except (StorageInternalError, DBAPIError) as error:
            if not is_outage(error):
                raise
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
