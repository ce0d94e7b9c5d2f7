"""Dynamic batching: requests that arrive close together run as one batch.

Requests wait in a bounded asyncio queue. A batch forms once it holds `max_batch` rows, or
`max_wait_ms` after its first request arrived, whichever comes first; it runs in one worker
thread (onnxruntime releases the GIL, the event loop keeps accepting), and each request's future
gets its own rows of every output. While a batch runs the next one gathers, so under load
batches fill up without waiting. A full queue refuses at once (`Overloaded`: a 503 with
Retry-After) rather than letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from serving.errors import ClientError

log = logging.getLogger(__name__)
Outputs = dict[str, np.ndarray]


class Overloaded(ClientError):
    def __init__(self, depth: int) -> None:
        super().__init__(f"the server's queue is full ({depth} requests waiting); retry shortly",
                         503, {"Retry-After": "1"})


@dataclass
class _Request:
    rows: np.ndarray
    future: asyncio.Future[Outputs]
    at: float = field(default_factory=time.monotonic)


class Batcher:
    """`run`: a batch (N, ...) -> each output (N, ...); `on_batch(size)` and `on_depth(depth)`
    are told of every batch and queue change (the metrics). Start it inside the event loop."""

    def __init__(self, run: Callable[[np.ndarray], Outputs], max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024,
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda size: None)
        self.on_depth = on_depth or (lambda depth: None)
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batcher")

    def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:  # whoever still waits gets an answer, not a hang
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(ClientError("the server is stopping", 503))
        self._pool.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def depth(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    async def submit(self, rows: np.ndarray) -> Outputs:
        """Each output's rows for `rows` ((n, ...) with n <= max_batch)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        if len(rows) > self.max_batch:
            raise ClientError(f"a batch of {len(rows)} is over the server's max batch size "
                              f"{self.max_batch}")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Request(rows, future))
        except asyncio.QueueFull:
            raise Overloaded(self.max_queue) from None
        self.on_depth(self._queue.qsize())
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carried: _Request | None = None  # a request that did not fit the last batch
        while True:
            first = carried or await self._queue.get()
            carried = None
            batch, size = [first], len(first.rows)
            deadline = first.at + self.max_wait
            while size < self.max_batch:
                if self._queue.empty():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                else:
                    nxt = self._queue.get_nowait()
                if size + len(nxt.rows) > self.max_batch:
                    carried = nxt
                    break
                batch.append(nxt)
                size += len(nxt.rows)
            await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        assert self._queue is not None
        self.on_depth(self._queue.qsize())
        live = [r for r in batch if not r.future.done()]  # a cancelled client's rows are skipped
        if not live:
            return
        try:
            rows = live[0].rows if len(live) == 1 else np.concatenate([r.rows for r in live])
            outputs = await loop.run_in_executor(self._pool, self.run, rows)
        except Exception as error:  # every request of the batch learns it; the loop goes on
            for r in live:
                if not r.future.done():
                    r.future.set_exception(error)
            return
        self.on_batch(len(rows))
        start = 0
        for r in live:
            n = len(r.rows)
            if not r.future.done():
                r.future.set_result({k: v[start : start + n] for k, v in outputs.items()})
            start += n
