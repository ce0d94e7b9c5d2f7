"""optuna-dashboard over the jobs' storage and artifact store, on a threaded WSGI server.

optuna-dashboard's own `run_server` is single-threaded (wsgiref); a threaded server keeps the
page responsive while another client polls a large study.

While the database is away the dashboard answers 503 with Retry-After, as the API does
(`OutageAnswer`), not a 500 that reads as a bug.

optuna-dashboard has no sign-in of its own, and its API can delete studies and trials and
rewrite notes: with a token configured it takes the API's token too (`TokenGate`), or the
token would guard one door of the database and leave the other open.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from functools import partial
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import optuna
import optuna_dashboard

from automl.service.views import OUTAGE, RETRY_AFTER_SECONDS
from automl.settings import Settings
from storage.artifacts import artifact_store
from storage.db import database_answers


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class OutageAnswer:
    """A request that failed while the database does not answer is a 503 with Retry-After;
    any other failure stays the server's 500.

    optuna-dashboard turns every exception of its API into a 500 of its own (`{"reason":
    "internal server error"}`), so the exception never comes out: its answer is held back
    until the app returns, and a 500 is checked against the database (one `SELECT 1`)."""

    def __init__(self, app: WSGIApplication, database_answers: Callable[[], bool]) -> None:
        self.app, self.database_answers = app, database_answers

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        answered: list[Any] = []

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered[:] = [status, headers, exc_info]
            return _no_write

        body = self.app(environ, hold)
        status, headers, exc_info = answered
        if status.startswith("500") and not self.database_answers():
            if hasattr(body, "close"):
                body.close()
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Retry-After", str(RETRY_AFTER_SECONDS)),
            ])
            return [f"{OUTAGE}\n".encode()]
        start_response(status, headers, exc_info)
        return body


def _no_write(data: bytes) -> None:
    """WSGI's legacy `write` (optuna-dashboard's framework, Bottle, never calls it)."""
    raise NotImplementedError("the dashboard's answer is returned, not written")


class TokenGate:
    """Lets through requests that carry the token: as HTTP Basic's password (any user name;
    what a browser asks for by itself on a 401) or as a Bearer token (what the CLI sends)."""

    def __init__(self, app: WSGIApplication, settings: Settings) -> None:
        self.app, self.settings = app, settings

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._carries_token(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", [
            ("WWW-Authenticate", 'Basic realm="automl dashboard", charset="UTF-8"'),
            ("Content-Type", "text/plain; charset=utf-8"),
        ])
        return [b"sign in with any user name and the AUTOML_API_TOKEN as password\n"]

    def _carries_token(self, header: str) -> bool:
        # WSGI hands headers over as latin-1 strings: back to the bytes that were sent
        scheme, _, value = header.encode("latin-1", "replace").partition(b" ")
        if scheme.lower() == b"bearer":
            given = value.strip()
        elif scheme.lower() == b"basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return False
        else:
            return False
        return self.settings.accepts(given)


def dashboard_server(
    settings: Settings, host: str, port: int, studies: optuna.storages.BaseStorage
) -> WSGIServer:
    app: WSGIApplication = OutageAnswer(
        optuna_dashboard.wsgi(studies, artifact_store=artifact_store(settings.artifacts_path)),
        partial(database_answers, settings.storage_url),
    )
    if settings.api_token:
        app = TokenGate(app, settings)
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
