"""What the service's test modules share: a job spec, in-process clients of the API (with and
without the token), and the API served for real by uvicorn."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from automl.service.api import create_app
from automl.settings import Settings

SPEC: dict[str, Any] = {"name": "api", "dataset": {"source": "builtin:digits"},
                        "budget": {"n_trials": 2, "max_epochs": 1}}


@pytest.fixture
def client(pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(home=tmp_path, database_url=pg_url))
    with TestClient(app) as test_client:
        yield test_client


def guarded_client(tmp_path: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path, api_token="s3cret", **settings)))


AUTH = {"Authorization": "Bearer s3cret"}


@contextlib.contextmanager
def live_api(settings: Settings) -> Iterator[str]:
    import threading

    import uvicorn

    from tests.support import free_port, wait_for

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def raw_request(address: str, head: str, body: bytes = b"") -> str:
    import socket

    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        return sock.recv(65536).decode(errors="replace")
