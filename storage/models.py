"""The jobs schema (SQLAlchemy 2). Optuna keeps its own tables in the same database; ours are
prefixed `automl_` and versioned in their own alembic table, so the two never collide."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "automl_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # also the Optuna study name
    name: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    runner: Mapped[str | None] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    best_trial: Mapped[int | None] = mapped_column(Integer)
    best_value: Mapped[float | None] = mapped_column(Float)
    n_running: Mapped[int] = mapped_column(Integer, default=0)
    n_complete: Mapped[int] = mapped_column(Integer, default=0)
    n_pruned: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_paused: Mapped[int] = mapped_column(Integer, default=0)  # freeze-thaw: checkpoint kept, not training
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    study_id: Mapped[int | None] = mapped_column(Integer)  # the Optuna study's id, once created
    restarts: Mapped[int] = mapped_column(Integer, default=0)  # drivers lost since the last resume

    __table_args__ = (Index("ix_automl_jobs_state_created", "state", "created_at"),)


class JobEvent(Base):
    __tablename__ = "automl_job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("automl_jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")


class MonitorPrediction(Base):
    """One sampled prediction a model server answered (storage.monitoring keeps the newest
    `max_rows` per model), and the label a client sent back for it, if any."""

    __tablename__ = "automl_monitor_predictions"

    # BigInteger on PostgreSQL; INTEGER on SQLite, where only that aliases the rowid
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)  # the model's nth sampled prediction
    prediction_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    label: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[float] = mapped_column(Float)  # unix time
    feedback: Mapped[int | None] = mapped_column(Integer)
    feedback_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("model", "prediction_id", name="uq_automl_monitor_predictions_id"),
        Index("ix_automl_monitor_predictions_model_seq", "model", "seq"),
        Index("ix_automl_monitor_predictions_model_at", "model", "at"),
    )


class MonitorModel(Base):
    """A model's count of sampled predictions ever inserted: the newest `max_rows` are those
    whose `seq` is above `seq - max_rows`, so pruning reads no rows it keeps."""

    __tablename__ = "automl_monitor_models"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class MonitorCount(Base):
    """The hourly rollups, kept for all time: one counter per (model, version, hour, kind, bin);
    kind `n` (bin 0: predictions), `class` (bin: the predicted class), `conf` (bin: one of the 15
    confidence bins). Counters are incremented in place (an upsert), so concurrent servers never
    lose a count."""

    __tablename__ = "automl_monitor_counts"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # unix time of its start
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    bin: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
