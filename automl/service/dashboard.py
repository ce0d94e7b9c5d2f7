"""optuna-dashboard over the jobs' storage and artifact store, on a threaded WSGI server.

optuna-dashboard's own `run_server` is single-threaded (wsgiref); a threaded server keeps the
page responsive while another client polls a large study.

optuna-dashboard has no sign-in of its own, and its API can delete studies and trials and
rewrite notes: with a token configured it takes the API's token too (`TokenGate`), or the
token would guard one door of the database and leave the other open.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import optuna
import optuna_dashboard

from automl.settings import Settings
from storage.artifacts import artifact_store


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


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
    app: WSGIApplication = optuna_dashboard.wsgi(
        studies, artifact_store=artifact_store(settings.artifacts_path)
    )
    if settings.api_token:
        app = TokenGate(app, settings)
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
