"""The REST API (FastAPI): submit, list, inspect, cancel jobs and download the best checkpoint.

Every route but /healthz needs `Authorization: Bearer <AUTOML_API_TOKEN>` when a token is
configured. Errors are JSON `{"detail": ...}` naming the problem: 422 for an invalid spec (with
the field), 404 for an unknown job id, 409 for a request the job's state does not allow,
503 while the database is unreachable.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from optuna.exceptions import StorageInternalError
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError

from automl.service import JobConflict, JobService, NotReady, UnknownJob
from automl.settings import Settings
from automl.spec import JobSpec, SpecError, require_absolute_dataset
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


# module level: route annotations are resolved in the module's namespace (PEP 563)
_bearer = HTTPBearer(auto_error=False)


MAX_OFFSET = 2**31 - 1  # SQL engines store OFFSET as a signed integer; beyond it is a 422


def create_app(settings: Settings | None = None, connect_seconds: float = 30.0) -> FastAPI:
    settings = settings or Settings()
    service = JobService(settings, JobStore(settings.storage_url, connect_seconds=connect_seconds))

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        token = settings.api_token
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials, token):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <AUTOML_API_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="automl",
        description="Hyperparameter search for fine-tuning pretrained image classifiers.",
        version="0.1.0",
    )
    guarded = [Depends(authorized)]

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
            require_absolute_dataset(spec)
        except SpecError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(error)) from None
        return service.submit(spec)

    @app.get("/jobs", dependencies=guarded, tags=["jobs"], response_model=JobPage)
    def list_jobs(
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        return service.list_jobs(state, limit, offset)

    @app.get("/jobs/{job_id}", dependencies=guarded, tags=["jobs"], response_model=JobView)
    def get_job(job_id: str) -> dict[str, Any]:
        return service.get(job_id)

    @app.get("/jobs/{job_id}/trials", dependencies=guarded, tags=["jobs"],
             response_model=list[TrialView])
    def trials(job_id: str) -> list[dict[str, Any]]:
        return service.trials(job_id)

    @app.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
              dependencies=guarded, tags=["jobs"], response_model=JobView)
    def cancel(job_id: str) -> dict[str, Any]:
        return service.cancel(job_id)

    @app.get("/jobs/{job_id}/best", dependencies=guarded, tags=["jobs"], response_model=BestView)
    def best(job_id: str) -> dict[str, Any]:
        return service.best(job_id)

    @app.get(
        "/jobs/{job_id}/best/checkpoint",
        dependencies=guarded,
        tags=["jobs"],
        response_class=FileResponse,
        responses={200: {"content": {"application/gzip": {}}}},
    )
    def checkpoint(job_id: str, background: BackgroundTasks) -> FileResponse:
        folder = Path(tempfile.mkdtemp(prefix="automl-archive-"))
        background.add_task(shutil.rmtree, folder, True)
        archive = service.checkpoint_archive(job_id, folder)
        return FileResponse(archive, media_type="application/gzip", filename=archive.name)

    return app
