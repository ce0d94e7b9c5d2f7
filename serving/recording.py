"""Handing what the server answered to the monitoring `Recorder`, off the request path.

A bounded queue drained by one thread: a request only puts its rows in (never waits on the
database); the thread hands the recorder everything waiting, up to `chunk` rows a call. A full
queue drops rows (counted): monitoring keeps a sample, and a slow database must not slow the
answers. A recorder that fails is logged, never a failed request.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from storage.monitoring import Recorder, Served

log = logging.getLogger(__name__)


class RecordingQueue:
    def __init__(self, recorder: Recorder, capacity: int = 10_000, chunk: int = 256,
                 on_drop: Callable[[int], None] | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.recorder, self.chunk = recorder, chunk
        self.on_drop = on_drop or (lambda n: None)
        self.on_failure = on_failure or (lambda: None)
        self._queue: queue.Queue[Served | None] = queue.Queue(capacity)
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="recorder", daemon=True)
        self._thread.start()

    def put(self, rows: list[Served]) -> None:
        for i, row in enumerate(rows):
            try:
                self._queue.put_nowait(row)
            except queue.Full:
                self.on_drop(len(rows) - i)
                return

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every row put so far was handed to the recorder; whether it was."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Hand over what is waiting, then close the recorder."""
        self.flush(timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=1.0)
        self._thread.join(timeout)
        try:
            self.recorder.close()
        except Exception:
            log.exception("closing the monitoring recorder failed")

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            rows = [first]
            while first is not None and len(rows) < self.chunk:
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                if rows[-1] is None:
                    break
            served = [r for r in rows if r is not None]
            if served:
                try:
                    self.recorder.record(served)
                except Exception:
                    self.on_failure()
                    log.exception("recording %d served predictions failed", len(served))
            for _ in rows:
                self._queue.task_done()
            with self._idle:
                self._idle.notify_all()
            if len(served) < len(rows):  # close() put the None
                return
