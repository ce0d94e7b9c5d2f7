"""The model server: one ONNX model behind FastAPI.

Routes: the KServe v2 / Open Inference Protocol (`/v2/health/live`, `/v2/health/ready`,
`/v2/models/{name}`, `/v2/models/{name}/ready`, `/v2/models/{name}/infer`), `POST /predict`
(image files), `POST /feedback` (true labels, for monitoring), `GET /models/{name}/monitor`
(the monitor's report) and `GET /metrics` (Prometheus).
Every route but `/v2/health/*` needs `Authorization: Bearer <token>` when a token is set,
`/metrics` included (Prometheus sends one: `authorization: {credentials: ...}` in its scrape
config). Errors are one line: `{"error": ...}` on the v2 routes (the protocol's shape),
`{"detail": ...}` elsewhere; a 500 names only an incident id, its traceback in the log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from serving.batching import Batcher
from serving.errors import ClientError
from serving.guard import Guard, error_body
from serving.metrics import Metrics
from serving.model import ServedModel
from serving.recording import RecordingQueue
from serving.routes import monitor, predict, v2
from serving.state import Server
from serving.watch import Watch
from storage.monitoring import Recorder

log = logging.getLogger(__name__)
MAX_MESSAGE = 300  # characters of one error line


def create_app(
    model: ServedModel,
    *,
    name: str,
    version: str = "1",
    recorder: Recorder | None = None,
    token: str | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 1024,
    max_body_bytes: int = 20 * 1024 * 1024,
    max_files: int = 64,
    watch: Watch | None = None,
) -> FastAPI:
    """`recorder`: where served predictions and feedback go (None: monitoring is off); it is
    closed when the app stops. `watch`: the monitor over what it records (`serving.watch`:
    `GET /models/{name}/monitor` and the alert gauge), stopped when the app stops. `token`:
    the bearer token every route but the health probes needs. `max_queue`: requests waiting
    for a batch before new ones get a 503."""
    metrics = Metrics(name)
    batcher = Batcher(model.run, max_batch, max_wait_ms, max_queue,
                      on_batch=metrics.batch_size.observe, on_depth=metrics.queue_depth.set)
    recording = None if recorder is None else RecordingQueue(
        recorder, on_drop=metrics.dropped.inc, on_failure=metrics.record_failures.inc)
    state = Server(model, name, version, batcher, metrics, recording, max_files, watch)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if watch is not None:
            watch.start(state.set_alert)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            if watch is not None:
                await run_in_threadpool(watch.stop)
            await batcher.stop()
            if recording is not None:
                await run_in_threadpool(recording.close)

    app = FastAPI(title=f"automl model server: {name}", version=version, lifespan=lifespan)
    app.state.server = state
    app.state.set_alert = state.set_alert  # the monitor's verdicts, as automl_monitor_alert
    app.include_router(v2.router)
    app.include_router(predict.router)
    app.include_router(monitor.router)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ClientError)
    async def _client(request: Request, error: ClientError) -> JSONResponse:
        return JSONResponse(error_body(request.scope, _short(error.message)), error.status,
                            headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        """The first problem, on one line, never the input it was about (any size)."""
        problems = error.errors()
        first = problems[0] if problems else {"loc": ["body"], "msg": "invalid"}
        where = ".".join(str(part) for part in first["loc"][:6])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        v2_route = request.url.path.startswith("/v2/")
        return JSONResponse(error_body(request.scope, _short(f"{where}: {first['msg']}{more}")),
                            400 if v2_route else 422)

    app.add_middleware(Guard, metrics=metrics, token=token, max_body_bytes=max_body_bytes)
    return app


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."
