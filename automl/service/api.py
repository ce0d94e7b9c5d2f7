"""The REST API (FastAPI): submit, list, inspect, cancel, resume jobs and download the best
checkpoint.

Every route but /healthz and the API's own docs needs `Authorization: Bearer <AUTOML_API_TOKEN>`
when a token is configured; `RequestGuard` checks it, and the body's size, before a byte of the
body is read. Errors are JSON `{"detail": ...}` naming the problem: 401 without the token, 413 for
a body over `AUTOML_MAX_BODY_BYTES`, 422 for an invalid spec (with the field; the input itself is
never echoed beyond a short excerpt), 404 for an unknown job id, 409 for a request the job's state
does not allow, 503 while the database is unreachable.
"""

from __future__ import annotations

import optuna
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from automl.errors import JobConflict, NotReady, SpecError, UnknownJob, UserError
from automl.search.bounds import MAX_DEPTH
from automl.search.validation_errors import MAX_ERRORS, field_part
from automl.service.guard import RequestGuard
from automl.service.routes import health, jobs
from automl.service.service import JobService
from automl.service.views import OUTAGE, RETRY_AFTER_SECONDS
from automl.settings import Settings
from storage.db import DATABASE_ERRORS
from storage.jobs import JobStore
from storage.optuna_storage import is_outage

MAX_MESSAGE = 500  # characters of one error message; an echo of a huge input is cut here
STATUS = {UnknownJob: status.HTTP_404_NOT_FOUND, JobConflict: status.HTTP_409_CONFLICT,
          NotReady: status.HTTP_409_CONFLICT, SpecError: status.HTTP_422_UNPROCESSABLE_CONTENT}


def create_app(
    settings: Settings | None = None,
    connect_seconds: float = 30.0,
    studies: optuna.storages.BaseStorage | None = None,
) -> FastAPI:
    """`studies`: an Optuna storage to share (`automl serve` hands the dashboard's over: one
    trial cache per process)."""
    settings = settings or Settings()
    app = FastAPI(
        title="automl",
        description="Hyperparameter search for fine-tuning pretrained image classifiers.",
        version="0.1.0",
    )
    app.state.service = JobService(
        settings, JobStore(settings.storage_url, connect_seconds=connect_seconds), studies
    )
    app.add_middleware(RequestGuard, settings=settings)
    app.include_router(health)
    app.include_router(jobs)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        """Each error's field and message, never the input it was about: that may be any size,
        and hold what JSON cannot encode (a NaN). Every part is bounded: the number of errors,
        each message, and each part of a field's name (an unknown key is input too)."""
        problems = error.errors()
        errors = [{"loc": [field_part(part) for part in e["loc"][:MAX_DEPTH]],
                   "msg": _short(str(e["msg"])), "type": e["type"]}
                  for e in problems[:MAX_ERRORS]]
        if len(problems) > MAX_ERRORS:
            errors.append({"loc": ["body"], "msg": f"and {len(problems) - MAX_ERRORS} more",
                           "type": "too_many_errors"})
        return JSONResponse({"detail": errors}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(UserError)
    async def _user(_: Request, error: UserError) -> JSONResponse:
        code = next((c for kind, c in STATUS.items() if isinstance(error, kind)),
                    status.HTTP_400_BAD_REQUEST)
        return JSONResponse({"detail": _short(str(error))}, code)

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, _database)
    return app


async def _database(_: Request, error: Exception) -> JSONResponse:
    if not is_outage(error):  # a bad request or a bug: a 500 with its traceback in the log
        raise error
    return JSONResponse(
        {"detail": f"{OUTAGE} ({type(error).__name__})"},
        status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."
