"""The REST API under concurrent load: `automl serve` on PostgreSQL, as deployed.

    automl-bench api [--url URL] [--jobs 100] [--clients 200] [--requests 1000]

(URL defaults to $AUTOML_TEST_DATABASE_URL, else the local test database; the benchmark works in
a fresh schema it drops afterwards.) A real `automl serve` process (uvicorn, the token on) is
started on the database; `--jobs` jobs are submitted, then each route gets `--requests`
requests from `--clients` concurrent clients (httpx, one connection each), and POST /jobs gets
`--clients // 4` concurrent submitters. Latency is from the client's side: queueing in the
server's thread pool and for the machine's cores included, which on a 2-core machine is most
of it.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

TOKEN = "bench-token"
SPEC: dict[str, Any] = {"name": "bench", "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": 20, "max_epochs": 8}}


@dataclass(frozen=True)
class Row:
    route: str
    clients: int
    requests: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    errors: int


@contextmanager
def _schema(url: str) -> Iterator[str]:
    name = f"bench_api_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(database_url: str, home: Path) -> Iterator[str]:
    port, dashboard = _port(), _port()
    env = {**os.environ, "AUTOML_DATABASE_URL": database_url, "AUTOML_API_TOKEN": TOKEN,
           "AUTOML_HOME": str(home)}
    automl = str(Path(sys.executable).with_name("automl"))
    process = subprocess.Popen([automl, "serve", "--port", str(port), "--dashboard-port",
                                str(dashboard)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("automl serve did not start")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _load(base: str, method: str, path: str, clients: int, requests: int,
                body: dict[str, Any] | None = None) -> tuple[list[float], int]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=120) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                response = await client.request(method, path, json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += response.status_code >= 400

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, errors


def run(url: str, jobs: int = 100, clients: int = 200, requests: int = 1000) -> list[Row]:
    rows = []
    with _schema(url) as database_url, _tmp_home() as home, serve(database_url, home) as base:
        submitted = asyncio.run(_load(base, "POST", "/jobs", 10, jobs, SPEC))
        assert submitted[1] == 0, "submitting the jobs failed"
        some_id = httpx.get(f"{base}/jobs", params={"limit": 1},
                            headers={"Authorization": f"Bearer {TOKEN}"}).json()["jobs"][0]["id"]
        routes: list[tuple[str, str, int, int, dict[str, Any] | None]] = [
            ("GET", "/jobs?limit=50", clients, requests, None),
            ("GET", f"/jobs/{some_id}", clients, requests, None),
            ("POST", "/jobs", max(1, clients // 4), max(1, requests // 4), SPEC),
        ]
        for method, path, n_clients, n_requests, body in routes:
            latencies, errors = asyncio.run(_load(base, method, path, n_clients, n_requests, body))
            ordered = sorted(latencies)
            rows.append(Row(f"{method} {re.sub(r'/jobs/[^/?]+', '/jobs/{id}', path)}", n_clients,
                            n_requests, statistics.median(ordered),
                            ordered[int(0.95 * (len(ordered) - 1))], ordered[-1], errors))
    return rows


@contextmanager
def _tmp_home() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="automl-bench-api-") as folder:
        yield Path(folder)
