"""A tiny real model for the serving tests (test_resnet trained on the digits at 32 px, exported
to ONNX by the trial engine's exporter), a few digits PNGs, a bounded in-memory monitoring
recorder, and the server run for real by uvicorn."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.model import ServedModel
from storage.monitoring import Served, UnknownPrediction
from tests.support import free_port, wait_for
from tests.workers.evaluate.tiny import train_tiny


@pytest.fixture(scope="session")
def checkpoint(isolated_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny-trial"))


@pytest.fixture(scope="session")
def onnx_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.export import export_onnx

    return export_onnx(checkpoint, tmp_path_factory.mktemp("export") / "model.onnx").path


@pytest.fixture(scope="session")
def model(onnx_file: Path) -> ServedModel:
    return ServedModel(onnx_file, threads=1)


@pytest.fixture(scope="session")
def images(isolated_cache: Path) -> list[Path]:
    """Two PNGs of each digit."""
    from workers.data.digits import ensure_digits

    root = ensure_digits()
    return [p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.glob("*.png"))[:2]]


class MemoryRecorder:
    """The monitoring `Recorder` protocol kept in memory, bounded (the newest `capacity` rows):
    what the tests read back instead of a database."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.rows: OrderedDict[str, Served] = OrderedDict()
        self.labels: dict[str, int] = {}
        self.calls = 0
        self.closed = False
        self.lock = threading.Lock()

    def record(self, served: list[Served]) -> None:
        with self.lock:
            self.calls += 1
            for row in served:
                self.rows[row.prediction_id] = row
                while len(self.rows) > self.capacity:
                    self.rows.popitem(last=False)

    def feedback(self, model: str, prediction_id: str, label: int) -> None:
        with self.lock:
            row = self.rows.get(prediction_id)
            if row is None or row.model != model:
                raise UnknownPrediction(prediction_id)
            self.labels[prediction_id] = label

    def close(self) -> None:
        self.closed = True


@contextlib.contextmanager
def live(app: object) -> Iterator[str]:
    """`app` served by uvicorn on a free port, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
