"""Served rows reach the recorder off the request path: batched, bounded, failures logged."""

from __future__ import annotations

import threading

import pytest

from serving.recording import RecordingQueue
from storage.monitoring import Served
from tests.serving.conftest import MemoryRecorder


def _rows(n: int, start: int = 0) -> list[Served]:
    return [Served(f"id{i}", "m", "1", 0, 0.5, {"width": 1.0}, 0.0)
            for i in range(start, start + n)]


def test_rows_reach_the_recorder_and_close_closes_it() -> None:
    recorder = MemoryRecorder()
    queue = RecordingQueue(recorder, chunk=50)
    queue.put(_rows(120))
    assert queue.flush(5)
    assert len(recorder.rows) == 120 and recorder.calls >= 3  # at most 50 rows a call
    queue.close()
    assert recorder.closed


def test_a_full_queue_drops_and_counts() -> None:
    gate = threading.Event()

    class Slow(MemoryRecorder):
        def record(self, served: list[Served]) -> None:
            gate.wait(5)
            super().record(served)

    dropped: list[int] = []
    recorder = Slow()
    queue = RecordingQueue(recorder, capacity=10, chunk=1, on_drop=dropped.append)
    queue.put(_rows(1))  # taken by the thread, which waits at the gate
    queue.put(_rows(30, 1))
    assert sum(dropped) >= 20
    gate.set()
    queue.close()
    assert 10 <= len(recorder.rows) <= 11


def test_a_failing_recorder_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MemoryRecorder):
        def record(self, served: list[Served]) -> None:
            raise ConnectionError("database gone")

    failures: list[None] = []
    queue = RecordingQueue(Broken(), on_failure=lambda: failures.append(None))
    queue.put(_rows(3))
    assert queue.flush(5)
    queue.put(_rows(2, 3))  # it keeps going
    assert queue.flush(5)
    queue.close()
    assert len(failures) == 2 and "recording 3 served predictions failed" in caplog.text
