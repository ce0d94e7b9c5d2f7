"""The API's front door: the token, then the body's size, both decided before the body is read.

FastAPI reads and parses a request's body before any route dependency runs, so a token check in
a dependency would let an unauthenticated body of any size be read, and validated, before its 401.
"""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from automl.settings import Settings
from serving.guard import bounded_body

OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class RequestGuard:
    """ASGI middleware in front of every route but `OPEN_PATHS`. A body without a Content-Length
    is read up to the limit and no further."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["path"] not in OPEN_PATHS and not self._authorized(headers.get(b"authorization")):
            await JSONResponse(
                {"detail": "missing or wrong bearer token: send Authorization: Bearer "
                           "<AUTOML_API_TOKEN>"},
                status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"},
            )(scope, receive, send)
            return
        replay = await bounded_body(headers, receive, self.settings.max_body_bytes)
        if replay is None:
            await self._too_large(scope, receive, send)
            return
        await self.app(scope, replay, send)

    def _authorized(self, header: bytes | None) -> bool:
        if self.settings.api_token is None:
            return True
        scheme, _, given = (header or b"").partition(b" ")
        return scheme.lower() == b"bearer" and self.settings.accepts(given.strip())

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(
            {"detail": f"request body over {self.settings.max_body_bytes:,} bytes "
                       "(AUTOML_MAX_BODY_BYTES); a job spec is a few KB"},
            status.HTTP_413_CONTENT_TOO_LARGE,
        )(scope, receive, send)
