"""The serving plane's two kinds of error: a model the server cannot load (the command line's
one line and exit code 2), and a request the server refuses (a 4xx with one line, or a 503)."""

from __future__ import annotations

from workers.errors import UserError


class ModelError(UserError):
    """No such model, a folder without model.onnx, an ONNX file without our metadata."""


class ClientError(Exception):
    """A request the server refuses; `message` is the one line the client reads."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.headers = message, status, headers or {}
