"""Dynamic batching: batches form under concurrency, each request gets its own rows."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batching import Batcher, Overloaded
from serving.errors import ClientError


def _doubling(sizes: list[int], delay: float = 0.0):  # type: ignore[no-untyped-def]
    def run(rows: np.ndarray) -> dict[str, np.ndarray]:
        sizes.append(len(rows))
        time.sleep(delay)
        return {"double": rows * 2, "sum": rows.sum(axis=1)}

    return run


def test_concurrent_requests_form_batches_and_get_their_rows() -> None:
    sizes: list[int] = []

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = Batcher(_doubling(sizes, 0.01), max_batch=8, max_wait_ms=20)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(np.full((1, 3), i)) for i in range(32)))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for i, out in enumerate(results):
        assert out["double"].tolist() == [[2 * i] * 3] and out["sum"].tolist() == [3 * i]
    assert sum(sizes) == 32 and max(sizes) == 8 and len(sizes) == 4


def test_a_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> float:
        batcher = Batcher(_doubling([]), max_batch=32, max_wait_ms=30)
        batcher.start()
        started = time.monotonic()
        await batcher.submit(np.zeros((1, 2)))
        waited = time.monotonic() - started
        await batcher.stop()
        return waited

    assert 0.025 <= asyncio.run(main()) < 1.0


def test_multi_row_requests_never_exceed_max_batch() -> None:
    sizes: list[int] = []

    async def main() -> None:
        batcher = Batcher(_doubling(sizes, 0.005), max_batch=5, max_wait_ms=10)
        batcher.start()
        outs = await asyncio.gather(*(batcher.submit(np.ones((3, 1)) * i) for i in range(6)))
        assert [o["double"][:, 0].tolist() for o in outs] == [[2 * i] * 3 for i in range(6)]
        with pytest.raises(ClientError, match="over the server's max batch size 5"):
            await batcher.submit(np.ones((6, 1)))
        await batcher.stop()

    asyncio.run(main())
    assert all(s <= 5 for s in sizes) and sum(sizes) == 18


def test_a_full_queue_refuses_and_a_failure_reaches_every_request() -> None:
    def failing(rows: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.05)
        raise RuntimeError("the model broke")

    async def main() -> None:
        batcher = Batcher(failing, max_batch=2, max_wait_ms=1, max_queue=2)
        batcher.start()
        outcomes = await asyncio.gather(*(batcher.submit(np.zeros((1, 1))) for _ in range(8)),
                                        return_exceptions=True)
        kinds = {type(o) for o in outcomes}
        assert Overloaded in kinds and RuntimeError in kinds
        overloaded = next(o for o in outcomes if isinstance(o, Overloaded))
        assert overloaded.status == 503 and overloaded.headers == {"Retry-After": "1"}
        await batcher.stop()

    asyncio.run(main())
