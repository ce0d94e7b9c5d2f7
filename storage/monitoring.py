"""What a model server records for monitoring, and the store that keeps it bounded.

The shapes are declared here once: the server (`serving.app`) hands `Served` rows to a
`Recorder` and forwards feedback; `automl monitor` reads them back. The SQL store (PostgreSQL
deployed, SQLite embedded) keeps a bounded sample of predictions and per-window rollups, never an
unbounded log of every image.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from storage.models import MonitorCount, MonitorModel, MonitorPrediction


@dataclass(frozen=True)
class Served:
    """One prediction the server answered."""

    prediction_id: str  # what the client sends back with POST /feedback
    model: str  # the served name
    version: str  # the model repository version
    label: int  # the predicted class index
    confidence: float  # its probability (at the model's temperature)
    signature: dict[str, float]  # serving.signature.signature(...)
    at: float  # unix time


class UnknownPrediction(LookupError):
    """Feedback for a prediction id the store does not hold (never served, or aged out)."""


class Recorder(Protocol):
    """Where the server puts what it served and the feedback it receives. `record` is called
    once per formed batch, off the request path; `feedback` raises `UnknownPrediction`."""

    def record(self, served: list[Served]) -> None: ...

    def feedback(self, model: str, prediction_id: str, label: int) -> None: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# The SQL store. It imports neither storage.db nor storage.optuna_storage (they load Optuna, and
# a serving node has no Optuna: the import-linter contract on `serving` follows imports through
# here), so it builds its own engine and runs the same alembic migrations the same way.

CONFIDENCE_BINS = 15  # the reference's confidence histogram: [0, 1/15], (1/15, 2/15], ...
HOUR = 3600
MAX_ROWS = 100_000
_MIGRATIONS = Path(__file__).parent / "migrations"
_VERSION_TABLE = "automl_alembic_version"  # storage.db.VERSION_TABLE
_LOCK_KEY = 0x6175746F6D6C  # storage.db's advisory lock: one migrator at a time, whichever store
log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The database did not answer within the retry window; the message names the URL."""


@dataclass(frozen=True)
class Held:
    """A sampled prediction as the store holds it, with its feedback label (None: none yet)."""

    prediction_id: str
    version: str
    label: int
    confidence: float
    signature: dict[str, float]
    at: float
    feedback: int | None


@dataclass(frozen=True)
class Rollup:
    """One hour of one model version: every prediction counted, sampled or not."""

    hour: int  # unix time of the hour's start
    version: str
    count: int
    classes: dict[int, int]  # predicted class -> predictions
    confidence: list[int]  # CONFIDENCE_BINS counts


def confidence_bin(confidence: float) -> int:
    """The bin of the reference's: (i/15, (i+1)/15], the first one closed at 0 (the
    evaluation's reliability bins, which deploy's reference.json carries)."""
    if not math.isfinite(confidence):
        return 0
    return min(max(math.ceil(confidence * CONFIDENCE_BINS) - 1, 0), CONFIDENCE_BINS - 1)


def _finite(signature: dict[str, float]) -> dict[str, float]:
    """The signature's finite numbers only: JSON (PostgreSQL's) has no NaN or infinity, and one
    odd image must not fail its whole batch."""
    return {k: float(v) for k, v in signature.items()
            if isinstance(v, int | float) and math.isfinite(v)}


def hour_of(at: float) -> int:
    return int(at // HOUR) * HOUR


def _outage(error: BaseException) -> bool:
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def _retry(fn: Callable[[], T], *, what: str, url: str, seconds: float) -> T:
    """`fn`, again with backoff while the database is away (a restart, a cut connection: the
    pool's pre-ping replaces the dead connection); any other error is raised at once."""
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return fn()
        except DBAPIError as error:
            if not _outage(error):
                raise
            if time.monotonic() + delay > deadline:
                where = make_url(url).render_as_string(hide_password=True)
                raise StoreUnavailable(
                    f"could not {what}: the database {where} did not answer for {seconds:.0f}s"
                ) from error
            log.warning("monitoring database unavailable; retrying in %.1fs", delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60}, pool_pre_ping=True)

        @event.listens_for(engine, "connect")
        def _pragmas(connection, _record):  # type: ignore[no-untyped-def]
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # the monitor reads while the server writes
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_recycle=1800)


def _migrate(engine: Engine) -> None:
    """The project's schema (storage/migrations, the jobs tables included) to its head, as
    `storage.db.migrate` does: under PostgreSQL's advisory lock, nothing when already there."""
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("version_table", _VERSION_TABLE)
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with engine.begin() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": _VERSION_TABLE})
        if set(context.get_current_heads()) == heads:
            return
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class MonitorStore:
    """The `Recorder` a model server writes to and `automl monitor` reads, in the project's
    database (PostgreSQL deployed, the SQLite file under AUTOML_HOME embedded).

    Bounded two ways. Sampled predictions (class, confidence, signature, time, id, feedback):
    the newest `max_rows` per model, the oldest deleted in the same transaction that inserts,
    by a per-model sequence number, so a batch costs the same at 100 rows as at 100,000
    (a sliding window, not a reservoir: feedback arrives for recent predictions, and a
    reservoir would drop recent ids at random, so their feedback would be refused). Rollups:
    one counter row per model version, hour, and class or confidence bin, for every
    prediction (sampled or not), kept for all time: (1 + classes + 15) rows an hour.
    `sample` < 1 keeps that fraction of predictions (chosen by their id, so every process
    keeps the same ones); feedback for one not kept is an `UnknownPrediction`."""

    def __init__(self, database_url: str, *, max_rows: int = MAX_ROWS, sample: float = 1.0,
                 connect_seconds: float = 30.0) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        if not 0.0 < sample <= 1.0:
            raise ValueError("sample must be in (0, 1]")
        self.url, self.max_rows, self.sample = database_url, max_rows, sample
        self.retry_seconds = connect_seconds
        self._engine = _engine(database_url)
        self._call(lambda: _migrate(self._engine), "migrate the monitoring tables")
        self._sqlite = self._engine.dialect.name == "sqlite"

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return _retry(fn, what=what, url=self.url, seconds=self.retry_seconds)

    def _kept(self, prediction_id: str) -> bool:
        if self.sample >= 1.0:
            return True
        digest = hashlib.blake2b(prediction_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.sample

    def _insert(self, table: Any) -> Any:
        return (sqlite_insert if self._sqlite else pg_insert)(table)

    # -- writing (the server) ------------------------------------------------------------------

    def record(self, served: list[Served]) -> None:
        """One formed batch: its rollups counted, its sampled rows inserted, and the model's
        oldest rows beyond `max_rows` deleted, in one transaction."""
        if not served:
            return
        counters: Counter[tuple[str, str, int, str, int]] = Counter()
        for row in served:
            hour = hour_of(row.at)
            counters[(row.model, row.version, hour, "n", 0)] += 1
            counters[(row.model, row.version, hour, "class", row.label)] += 1
            counters[(row.model, row.version, hour, "conf", confidence_bin(row.confidence))] += 1
        sampled: dict[str, list[Served]] = {}
        for row in served:
            if self._kept(row.prediction_id):
                sampled.setdefault(row.model, []).append(row)
        counts = [{"model": m, "version": v, "hour": h, "kind": k, "bin": b, "count": n}
                  for (m, v, h, k, b), n in sorted(counters.items())]  # one lock order

        def write() -> None:
            with self._engine.begin() as connection:
                upsert = self._insert(MonitorCount)
                connection.execute(upsert.on_conflict_do_update(
                    index_elements=["model", "version", "hour", "kind", "bin"],
                    set_={"count": MonitorCount.count + upsert.excluded.count}), counts)
                for model in sorted(sampled):
                    self._insert_sampled(connection, model, sampled[model])

        self._call(write, "record predictions")

    def _insert_sampled(self, connection: Connection, model: str, rows: list[Served]) -> None:
        """The rows numbered on from the model's counter (its row, locked till commit, orders
        concurrent writers), and the model's rows numbered `max_rows` or more below the newest
        deleted: an index range, whatever the table holds."""
        upsert = self._insert(MonitorModel).values(model=model, seq=len(rows))
        top = int(connection.execute(upsert.on_conflict_do_update(
            index_elements=["model"], set_={"seq": MonitorModel.seq + upsert.excluded.seq})
            .returning(MonitorModel.seq)).scalar_one())
        first = top - len(rows) + 1
        connection.execute(
            self._insert(MonitorPrediction).on_conflict_do_nothing(
                index_elements=["model", "prediction_id"]),
            [{"model": r.model, "seq": first + i, "prediction_id": r.prediction_id,
              "version": r.version, "label": r.label, "confidence": r.confidence,
              "signature": _finite(r.signature), "at": r.at} for i, r in enumerate(rows)])
        if top > self.max_rows:
            connection.execute(delete(MonitorPrediction).where(
                MonitorPrediction.model == model, MonitorPrediction.seq <= top - self.max_rows))

    def feedback(self, model: str, prediction_id: str, label: int) -> None:
        """The true label of a held prediction, committed before this returns (a later one for
        the same id replaces it); `UnknownPrediction` for an id never served, not sampled, or
        pruned. A negative label is a `ValueError`."""
        if int(label) < 0:
            raise ValueError(f"a label is a class index, got {label}")

        def write() -> int:
            with self._engine.begin() as connection:
                result = connection.execute(
                    update(MonitorPrediction)
                    .where(MonitorPrediction.model == model,
                           MonitorPrediction.prediction_id == prediction_id)
                    .values(feedback=int(label), feedback_at=time.time()))
                return int(result.rowcount)

        if self._call(write, "store feedback") == 0:
            raise UnknownPrediction(f"no prediction {prediction_id!r} of model {model!r} is held "
                                    "(never served, or aged out of the sample)")

    def close(self) -> None:
        self._engine.dispose()

    # -- reading (the monitor) -----------------------------------------------------------------

    def held(self, model: str, since: float, until: float,
             version: str | None = None) -> list[Held]:
        """The model's sampled predictions served in [since, until), oldest first."""
        query = (select(MonitorPrediction).where(
            MonitorPrediction.model == model, MonitorPrediction.at >= since,
            MonitorPrediction.at < until).order_by(MonitorPrediction.id))
        if version is not None:
            query = query.where(MonitorPrediction.version == version)

        def read() -> list[Held]:
            with Session(self._engine) as session:
                return [Held(r.prediction_id, r.version, r.label, r.confidence,
                             dict(r.signature), r.at, r.feedback)
                        for r in session.scalars(query)]

        return self._call(read, "read predictions")

    def rows(self, model: str) -> int:
        """How many sampled predictions of the model are held (at most `max_rows`)."""
        query = select(func.count()).select_from(MonitorPrediction).where(
            MonitorPrediction.model == model)

        def read() -> int:
            with self._engine.connect() as connection:
                return int(connection.scalar(query) or 0)

        return self._call(read, "count predictions")

    def rollups(self, model: str, since: float, until: float,
                version: str | None = None) -> list[Rollup]:
        """The model's hourly rollups for the hours starting in [since, until), oldest first,
        one per (hour, version)."""
        query = select(MonitorCount).where(
            MonitorCount.model == model, MonitorCount.hour >= since, MonitorCount.hour < until)
        if version is not None:
            query = query.where(MonitorCount.version == version)

        def read() -> list[Rollup]:
            with Session(self._engine) as session:
                found: dict[tuple[int, str], Rollup] = {}
                for row in session.scalars(query):
                    key = (row.hour, row.version)
                    if key not in found:
                        found[key] = Rollup(row.hour, row.version, 0, {}, [0] * CONFIDENCE_BINS)
                    rollup = found[key]
                    if row.kind == "n":
                        found[key] = replace(rollup, count=rollup.count + row.count)
                    elif row.kind == "class":
                        rollup.classes[row.bin] = rollup.classes.get(row.bin, 0) + row.count
                    elif row.kind == "conf" and 0 <= row.bin < CONFIDENCE_BINS:
                        rollup.confidence[row.bin] += row.count
                return [found[key] for key in sorted(found)]

        return self._call(read, "read rollups")
