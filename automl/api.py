"""The REST API (FastAPI): submit, list, inspect, cancel, resume jobs and download the best
checkpoint.

Every route but /healthz and the API's own docs needs `Authorization: Bearer <AUTOML_API_TOKEN>`
when a token is configured. `RequestGuard` checks it, and the body's size, before a byte of the
body is read: an unauthenticated or oversized request costs the server nothing. Errors are JSON
`{"detail": ...}` naming the problem: 401 without the token, 413 for a body over
`AUTOML_MAX_BODY_BYTES`, 422 for an invalid spec (with the field; the input itself is never
echoed beyond a short excerpt), 404 for an unknown job id, 409 for a request the job's state does
not allow, 503 while the database is unreachable.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from optuna.exceptions import StorageInternalError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from automl.service import JobConflict, JobService, NotReady, UnknownJob
from automl.settings import Settings
from automl.spec import JOB_ID_PATTERN, JobSpec, SpecError, require_under_roots
from storage.jobs import JobStore
from storage.optuna_storage import DatabaseUnavailable

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Counts(BaseModel):
    running: int
    complete: int
    pruned: int
    failed: int
    budget: int


class Best(BaseModel):
    trial: int | None
    value: float | None


class JobView(BaseModel):
    id: str
    name: str
    state: JobState
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    cancel_requested: bool
    error: str | None
    study: str
    trials: Counts
    objective: str
    best: Best
    test_metrics: dict[str, Any] | None
    dashboard: str


class JobPage(BaseModel):
    jobs: list[JobView]
    total: int
    limit: int
    offset: int


class TrialView(BaseModel):
    number: int
    state: str
    value: float | None
    epochs: int
    intermediate_values: dict[str, float]
    params: dict[str, Any]
    config: dict[str, Any]
    started_at: str | None
    finished_at: str | None


class BestView(BaseModel):
    job: str
    trial: int
    objective: str
    value: float | None
    config: dict[str, Any]
    test_metrics: dict[str, Any]


# module level: route annotations are resolved in the module's namespace (PEP 563).
# It declares the scheme in the OpenAPI document; RequestGuard enforces it.
_bearer = HTTPBearer(auto_error=False)
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="the job's id")]

MAX_OFFSET = 2**31 - 1  # SQL engines store OFFSET as a signed integer; beyond it is a 422
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
MAX_MESSAGE = 500  # characters of one error message; an echo of a huge input is cut here


class RequestGuard:
    """ASGI middleware in front of every route: the token, then the body's size, both decided
    before the body is read (FastAPI would read and parse a body before any route dependency
    runs). A body without a Content-Length is read up to the limit and no further."""

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
        limit = self.settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._too_large(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

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


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def create_app(settings: Settings | None = None, connect_seconds: float = 30.0) -> FastAPI:
    settings = settings or Settings()
    service = JobService(settings, JobStore(settings.storage_url, connect_seconds=connect_seconds))

    app = FastAPI(
        title="automl",
        description="Hyperparameter search for fine-tuning pretrained image classifiers.",
        version="0.1.0",
    )
    app.add_middleware(RequestGuard, settings=settings)
    guarded = [Depends(_bearer)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        """Each error's field and message, never the input it was about: that may be any size,
        and hold what JSON cannot encode (a NaN)."""
        errors = [{"loc": [str(part) for part in e["loc"]], "msg": _short(str(e["msg"])),
                   "type": e["type"]} for e in error.errors()[:50]]
        return JSONResponse({"detail": errors}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(UnknownJob)
    async def _unknown(_: Request, error: UnknownJob) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(JobConflict)
    @app.exception_handler(NotReady)
    async def _conflict(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status.HTTP_409_CONFLICT)

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(StorageInternalError)
    async def _database(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"database unavailable, retry shortly ({type(error).__name__})"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        service.store.list_jobs(limit=1)
        return {"status": "ok"}

    @app.post("/jobs", status_code=status.HTTP_201_CREATED, dependencies=guarded, tags=["jobs"],
              response_model=JobView)
    def submit(spec: JobSpec) -> dict[str, Any]:
        try:
            require_under_roots(spec, settings.dataset_roots)
        except SpecError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, _short(str(error))) from None
        return service.submit(spec)

    @app.get("/jobs", dependencies=guarded, tags=["jobs"], response_model=JobPage)
    def list_jobs(
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        return service.list_jobs(state, limit, offset)

    @app.get("/jobs/{job_id}", dependencies=guarded, tags=["jobs"], response_model=JobView)
    def get_job(job_id: JobId) -> dict[str, Any]:
        return service.get(job_id)

    @app.get("/jobs/{job_id}/trials", dependencies=guarded, tags=["jobs"],
             response_model=list[TrialView])
    def trials(job_id: JobId) -> list[dict[str, Any]]:
        return service.trials(job_id)

    @app.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
              dependencies=guarded, tags=["jobs"], response_model=JobView)
    def cancel(job_id: JobId) -> dict[str, Any]:
        return service.cancel(job_id)

    @app.post("/jobs/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED,
              dependencies=guarded, tags=["jobs"], response_model=JobView)
    def resume(job_id: JobId) -> dict[str, Any]:
        """Queue a failed or cancelled job again: a runner resumes it where it stopped (its
        study and Ray Tune state), with the spec it started with."""
        return service.resume(job_id)

    @app.get("/jobs/{job_id}/best", dependencies=guarded, tags=["jobs"], response_model=BestView)
    def best(job_id: JobId) -> dict[str, Any]:
        return service.best(job_id)

    @app.get(
        "/jobs/{job_id}/best/checkpoint",
        dependencies=guarded,
        tags=["jobs"],
        response_class=FileResponse,
        responses={200: {"content": {"application/gzip": {}}}},
    )
    def checkpoint(job_id: JobId, background: BackgroundTasks) -> FileResponse:
        folder = Path(tempfile.mkdtemp(prefix="automl-archive-"))
        background.add_task(shutil.rmtree, folder, True)
        archive = service.checkpoint_archive(job_id, folder)
        return FileResponse(archive, media_type="application/gzip", filename=archive.name)

    return app
