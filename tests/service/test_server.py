"""`automl serve` as a process: told to stop, it stops, whatever its clients do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from automl.service.server import GRACEFUL_SHUTDOWN_SECONDS
from automl.settings import Settings
from tests.support import AUTOML, free_port, wait_for


def test_serve_stops_after_sigterm_although_clients_stall(tmp_path: Path) -> None:
    """A client that sent a request's headers and then nothing (its body promised, never
    sent) holds a request open on the API and on the dashboard: SIGTERM still ends the
    process within the graceful-shutdown bound, not when the client gives up."""
    api, dashboard = free_port(), free_port()
    env = {**os.environ, "AUTOML_HOME": str(tmp_path / "automl-data")}
    for name in ("AUTOML_DATABASE_URL", "AUTOML_API_URL", "AUTOML_API_TOKEN"):
        env.pop(name, None)
    server = subprocess.Popen([AUTOML, "serve", "--port", str(api), "--dashboard-port",
                               str(dashboard)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    stalled = []
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{api}/healthz").status_code == 200, 120,
                 "the API")
        for port, path in ((api, "/jobs"), (dashboard, "/api/studies")):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: 1000\r\n\r\n{".encode())
            stalled.append(client)
        time.sleep(1)  # both requests are in the servers' hands
        server.send_signal(signal.SIGTERM)
        started = time.monotonic()
        server.wait(timeout=GRACEFUL_SHUTDOWN_SECONDS + 20)
        assert time.monotonic() - started < GRACEFUL_SHUTDOWN_SECONDS + 20
    finally:
        for client in stalled:
            client.close()
        if server.poll() is None:
            server.kill()
        output = server.communicate(timeout=30)[0]
    # the stalled request was cut off by the bound (uvicorn logs the cancelled task's frames)
    assert "timeout graceful shutdown exceeded" in output, output


def test_serve_opens_one_optuna_storage_for_the_api_and_the_dashboard(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each storage is a trial cache holding every finished trial it read: two in `automl
    serve` would hold every study twice."""
    import optuna

    from automl.service.server import build

    opened: list[object] = []
    real_init = optuna.storages.RDBStorage.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", counting_init)
    api, dashboard = build(Settings(home=tmp_path, database_url=pg_url), "127.0.0.1", free_port())
    dashboard.server_close()
    assert len(opened) == 1
    assert getattr(api.state.service.studies, "_backend", None) is opened[0]
