"""The server's front door (outermost middleware): counts and times every request, answers an
unexpected error with a 500 that names an incident id (its traceback in the log under that id,
never in the response), checks the bearer token, and bounds the body before a byte of it is read.

A token check in a FastAPI dependency would run after the body is read and parsed (a multipart
upload spooled to disk), so it is done here, as the project's API does (automl.service.guard).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import Metrics

log = logging.getLogger(__name__)
OPEN_PREFIX = "/v2/health/"  # liveness and readiness probes carry no token


async def bounded_body(headers: dict[bytes, bytes], receive: Receive, limit: int
                       ) -> Receive | None:
    """The request's body read up to `limit` bytes (a declared Content-Length over it: not read
    at all), as a `receive` that hands it on whole; None when the body is over the limit."""
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            return None
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    return replay


class Guard:
    def __init__(self, app: ASGIApp, metrics: Metrics, token: str | None,
                 max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes
        self.token = token.encode("utf-8") if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        sent = False

        async def counted(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status, sent = message["status"], True
            await send(message)

        try:
            await self._guarded(scope, receive, counted)
        except Exception:
            incident = secrets.token_hex(4)
            log.exception("internal error %s on %s %s", incident, scope.get("method"),
                          scope.get("path"))
            if not sent:
                await _answer(counted, 500, f"internal error {incident}; the traceback is in "
                                            "the server's log under that id", scope)
        finally:
            self.metrics.observe(route_of(scope), status, time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if not scope["path"].startswith(OPEN_PREFIX) and not self._authorized(
                headers.get(b"authorization")):
            await _answer(send, 401, "missing or wrong bearer token: send Authorization: Bearer "
                                     "<AUTOML_API_TOKEN>", scope, {"WWW-Authenticate": "Bearer"})
            return
        replay = await bounded_body(headers, receive, self.max_body)
        if replay is None:
            await self._too_large(scope, send)
            return
        await self.app(scope, replay, send)

    def _authorized(self, header: bytes | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await _answer(send, 413, f"request body over {self.max_body:,} bytes "
                                 "(serve-model --max-body-mb)", scope)


def route_of(scope: Scope) -> str:
    """The matched route's template (bounded label values), "other" for none."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


def error_body(scope: Scope, message: str) -> dict[str, str]:
    """The KServe v2 protocol's error shape on its routes, the project's elsewhere."""
    return {"error": message} if scope.get("path", "").startswith("/v2/") else {"detail": message}


async def _answer(send: Send, status: int, message: str, scope: Scope,
                  headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(scope, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
