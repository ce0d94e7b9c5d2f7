"""`automl serve`: the REST API and optuna-dashboard in one process, over one Optuna storage.

One storage, so one trial cache: each keeps every finished trial it has read in memory (some
300 MB per 10,000 trials), and the API and the dashboard read the same studies.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from fastapi import FastAPI

from automl.service.api import create_app
from automl.service.dashboard import dashboard_server
from automl.settings import Settings
from storage.optuna_storage import optuna_storage

# How long `automl serve` waits, once told to stop, for requests in flight: a checkpoint being
# downloaded ends, a client that stalls mid-request (which would keep it alive for as long as
# it stalls) is cut off. Below docker's 10 s between SIGTERM and SIGKILL, and Kubernetes' 30 s.
GRACEFUL_SHUTDOWN_SECONDS = 8


def build(
    settings: Settings, host: str, dashboard_port: int, connect_seconds: float = 10.0
) -> tuple[FastAPI, WSGIServer]:
    studies = optuna_storage(settings.storage_url, retry_seconds=connect_seconds)
    api = create_app(settings, connect_seconds=connect_seconds, studies=studies)
    return api, dashboard_server(settings, host, dashboard_port, studies)


def start_dashboard(server: WSGIServer) -> None:
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
