"""The monitoring store: bounded samples, hourly rollups, feedback; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from storage.models import MonitorCount
from storage.monitoring import (
    CONFIDENCE_BINS,
    HOUR,
    MonitorStore,
    Recorder,
    Served,
    UnknownPrediction,
    confidence_bin,
)
from tests.conftest import pg_schema
from tests.support import proxy_to

T0 = 1_700_000_000.0 - 1_700_000_000.0 % HOUR  # the start of an hour


def served(i: int, *, model: str = "m", at: float = T0, label: int | None = None,
           confidence: float = 0.9, version: str = "1") -> Served:
    return Served(prediction_id=f"p{i}", model=model, version=version,
                  label=i % 3 if label is None else label, confidence=confidence,
                  signature={"width": 32.0, "height": 32.0, "brightness": 0.5, "contrast": 0.2,
                             "saturation": 0.3}, at=at)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'automl.db'}"
    else:
        with pg_schema(request.node.name) as pg:
            yield pg


def test_it_is_a_recorder(url: str) -> None:
    store: Recorder = MonitorStore(url)
    store.close()


def test_rows_stay_bounded_and_the_newest_are_kept(url: str) -> None:
    store = MonitorStore(url, max_rows=50)
    for batch in range(7):  # 7 batches of 16: 112 predictions
        store.record([served(batch * 16 + i, at=T0 + batch) for i in range(16)])
        assert store.rows("m") <= 50
    store.record([served(i, model="other") for i in range(10)])
    assert store.rows("m") == 50 and store.rows("other") == 10
    held = store.held("m", T0, T0 + HOUR)
    assert [h.prediction_id for h in held] == [f"p{i}" for i in range(62, 112)]
    with pytest.raises(UnknownPrediction):
        store.feedback("m", "p0", 1)  # pruned
    store.feedback("m", "p111", 2)  # held
    store.close()


def test_rollups_count_every_prediction_for_all_time(url: str) -> None:
    store = MonitorStore(url, max_rows=5)
    store.record([served(i, confidence=0.99 if i % 2 else 0.05) for i in range(20)])
    store.record([served(100 + i, at=T0 + HOUR + 10, label=1) for i in range(4)])
    store.record([served(200, at=T0 + 5, version="2", label=0)])
    first, second, newer = store.rollups("m", T0, T0 + 2 * HOUR)
    assert (first.hour, first.version, first.count) == (int(T0), "1", 20)
    assert first.classes == {0: 7, 1: 7, 2: 6}
    assert first.confidence[CONFIDENCE_BINS - 1] == 10 and first.confidence[0] == 10
    assert sum(first.confidence) == 20
    assert (second.hour, second.version) == (int(T0), "2") and second.count == 1
    assert (newer.hour, newer.count, newer.classes) == (int(T0) + HOUR, 4, {1: 4})
    assert [r.version for r in store.rollups("m", T0, T0 + 2 * HOUR, version="2")] == ["2"]
    assert store.rows("m") == 5  # the sample is bounded, the rollups are not
    engine = create_engine(url)
    with engine.connect() as connection:  # tiny: (1 + classes + bins used) rows an hour
        assert connection.scalar(select(func.count()).select_from(MonitorCount)) <= 3 * (1 + 3 + 2)
    engine.dispose()
    store.close()


def test_confidence_bins_match_the_reference_edges() -> None:
    edges = [i / CONFIDENCE_BINS for i in range(CONFIDENCE_BINS + 1)]
    for i in range(CONFIDENCE_BINS):  # (edges[i], edges[i + 1]], as deploy's reference
        assert confidence_bin((edges[i] + edges[i + 1]) / 2) == i
        assert confidence_bin(edges[i + 1]) == i
    assert confidence_bin(0.0) == 0 and confidence_bin(1.0) == CONFIDENCE_BINS - 1
    assert confidence_bin(float("nan")) == 0


def test_a_non_finite_signature_value_does_not_fail_the_batch(url: str) -> None:
    store = MonitorStore(url)
    odd = Served("odd", "m", "1", 0, 0.5, {"width": 3.0, "contrast": float("nan"),
                                           "brightness": float("inf")}, T0)
    store.record([odd, served(1)])
    assert store.held("m", T0, T0 + 1)[0].signature == {"width": 3.0}
    store.close()


def test_feedback_is_stored_and_unknown_ids_are_refused(url: str) -> None:
    store = MonitorStore(url)
    store.record([served(i) for i in range(3)])
    store.feedback("m", "p1", 2)
    store.feedback("m", "p2", 0)
    store.feedback("m", "p2", 2)  # a correction replaces the label
    with pytest.raises(UnknownPrediction):
        store.feedback("m", "never-served", 0)
    with pytest.raises(UnknownPrediction):
        store.feedback("other-model", "p1", 0)
    with pytest.raises(ValueError):
        store.feedback("m", "p1", -1)
    store.close()
    reopened = MonitorStore(url)  # committed: another process sees it
    assert [h.feedback for h in reopened.held("m", T0, T0 + 1)] == [None, 2, 2]
    reopened.close()


def test_a_sample_keeps_the_same_ids_in_every_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'automl.db'}"
    store, again = MonitorStore(url, sample=0.5), MonitorStore(url, sample=0.5)
    store.record([served(i) for i in range(200)])
    kept = {h.prediction_id for h in store.held("m", T0, T0 + 1)}
    assert 60 < len(kept) < 140
    assert kept == {f"p{i}" for i in range(200) if again._kept(f"p{i}")}
    assert store.rollups("m", T0, T0 + 1)[0].count == 200  # rollups count them all
    dropped = next(f"p{i}" for i in range(200) if f"p{i}" not in kept)
    with pytest.raises(UnknownPrediction):
        store.feedback("m", dropped, 0)


def test_the_embedded_default_is_the_projects_sqlite_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from automl.settings import Settings
    from storage.jobs import JobStore

    monkeypatch.setenv("AUTOML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AUTOML_DATABASE_URL", raising=False)
    url = Settings().storage_url
    JobStore(url)  # the jobs store migrates the same schema: both live in one file
    store = MonitorStore(url)
    store.record([served(1)])
    assert (tmp_path / "home" / "automl.db").is_file() and store.rows("m") == 1
    store.close()


def test_acknowledged_feedback_survives_a_cut_connection() -> None:
    """The connection the store pooled is cut between record and feedback (a database
    restart, as the client sees it): feedback reconnects, and once it returns the label is
    committed: a fresh connection, after another cut, reads it."""
    with pg_schema("monitor_cut") as pg:
        parsed = make_url(pg)
        with proxy_to(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
            url = proxy.url_for(pg)
            store = MonitorStore(url, connect_seconds=20)
            store.record([served(i) for i in range(3)])
            proxy.cut()
            proxy.restore()
            store.feedback("m", "p1", 2)  # the pooled connection is dead: pre-ping replaces it
            proxy.cut()  # whatever was in flight is gone; the commit was not
            proxy.restore()
            assert [h.feedback for h in store.held("m", T0, T0 + 1)] == [None, 2, None]
            store.close()
        direct = MonitorStore(pg)
        assert [h.feedback for h in direct.held("m", T0, T0 + 1)] == [None, 2, None]
        direct.close()


def test_feedback_waits_out_a_short_outage() -> None:
    with pg_schema("monitor_outage") as pg:
        parsed = make_url(pg)
        with proxy_to(parsed.host or "127.0.0.1", parsed.port or 5432) as proxy:
            store = MonitorStore(proxy.url_for(pg), connect_seconds=20)
            store.record([served(1)])
            proxy.cut()  # refused while cut: the call retries until it is back
            threading.Timer(1.0, proxy.restore).start()
            started = time.monotonic()
            store.feedback("m", "p1", 0)
            assert time.monotonic() - started >= 0.9
            store.close()



def test_concurrent_servers_lose_no_count_and_stay_bounded(url: str) -> None:
    """Two server processes' recorders (two stores, one database) writing at once."""
    stores = [MonitorStore(url, max_rows=40), MonitorStore(url, max_rows=40)]

    def serve(k: int) -> None:
        for batch in range(10):
            stores[k].record([served(1000 * k + 10 * batch + i, at=T0 + batch) for i in range(10)])

    threads = [threading.Thread(target=serve, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].rows("m") == 40
    assert stores[1].rollups("m", T0, T0 + 1)[0].count == 200
    for store in stores:
        store.close()


def test_a_database_from_before_monitoring_is_migrated(url: str) -> None:
    """A deployment's database at the jobs schema's revision 0002: the store brings it to the
    head, the jobs kept, and `automl runner`'s JobStore finds nothing left to do."""
    from alembic import command
    from alembic.config import Config

    from storage.jobs import JobStore
    from storage.monitoring import _MIGRATIONS, _VERSION_TABLE

    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("version_table", _VERSION_TABLE)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(text("INSERT INTO automl_jobs (id, name, spec, state, created_at, "
                                "attempts, cancel_requested, n_running, n_complete, n_pruned, "
                                "n_failed, restarts) VALUES ('job-1', 'digits', '{}', 'queued', "
                                "CURRENT_TIMESTAMP, 0, false, 0, 0, 0, 0, 0)"))
    engine.dispose()
    store = MonitorStore(url)  # upgrades it
    store.record([served(1)])
    jobs = JobStore(url)
    assert store.rows("m") == 1 and jobs.get("job-1").name == "digits"
    store.close()
