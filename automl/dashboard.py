"""optuna-dashboard over the jobs' storage and artifact store, on a threaded WSGI server.

optuna-dashboard's own `run_server` is single-threaded (wsgiref); a threaded server keeps the
page responsive while another client polls a large study.
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna_dashboard

from automl.settings import Settings
from storage.artifacts import artifact_store
from storage.optuna_storage import optuna_storage


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def dashboard_server(settings: Settings, host: str, port: int) -> WSGIServer:
    app = optuna_dashboard.wsgi(
        optuna_storage(settings.storage_url), artifact_store=artifact_store(settings.artifacts_path)
    )
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)


def serve_in_background(settings: Settings, host: str, port: int) -> WSGIServer:
    server = dashboard_server(settings, host, port)
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    return server
