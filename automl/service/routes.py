"""The API's routes, by resource: the jobs, and the service's own health."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.security import HTTPBearer

from automl.jobs.admission import require_tracking_server, require_under_roots
from automl.search.job_ids import JOB_ID_PATTERN
from automl.search.spec import JobSpec
from automl.service.service import JobService
from automl.service.views import BestView, JobPage, JobState, JobView, ParetoView, TrialPage

# module level: route annotations are resolved in the module's namespace (PEP 563).
# It declares the scheme in the OpenAPI document; RequestGuard enforces it.
_bearer = HTTPBearer(auto_error=False)
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="the job's id")]
MAX_OFFSET = 2**31 - 1  # SQL engines store OFFSET as a signed integer; beyond it is a 422
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]

jobs = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(_bearer)])
health = APIRouter(tags=["service"])


def job_service(request: Request) -> JobService:
    service: JobService = request.app.state.service
    return service


Service = Annotated[JobService, Depends(job_service)]


@health.get("/healthz")
def healthz(service: Service) -> dict[str, str]:
    service.store.list_jobs(limit=1)
    return {"status": "ok"}


@jobs.post("", status_code=status.HTTP_201_CREATED, response_model=JobView)
def submit(spec: JobSpec, service: Service) -> JobView:
    # validation read no file; the paths are judged against the roots before any is opened
    require_under_roots(spec, service.settings.dataset_roots)  # a SpecError is a 422
    require_tracking_server(spec, service.settings.mlflow_uri)
    return service.submit(spec)


@jobs.get("", response_model=JobPage)
def list_jobs(
    service: Service,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> JobPage:
    return service.list_jobs(state, limit, offset)


@jobs.get("/{job_id}", response_model=JobView)
def get_job(job_id: JobId, service: Service) -> JobView:
    return service.get(job_id)


@jobs.get("/{job_id}/trials", response_model=TrialPage)
def trials(
    job_id: JobId,
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> TrialPage:
    """One page of the job's trials, by number, with how many there are: a 10,000-trial study
    is never one response."""
    return service.trials(job_id, limit, offset)


@jobs.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
def cancel(job_id: JobId, service: Service) -> JobView:
    return service.cancel(job_id)


@jobs.post("/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=JobView)
def resume(job_id: JobId, service: Service) -> JobView:
    """Queue a failed or cancelled job again: a runner resumes it where it stopped (its study
    and Ray Tune state), with the spec it started with."""
    return service.resume(job_id)


@jobs.get("/{job_id}/best", response_model=BestView)
def best(job_id: JobId, service: Service) -> BestView:
    return service.best(job_id)


@jobs.get("/{job_id}/best/checkpoint", response_class=FileResponse,
          responses={200: {"content": {"application/gzip": {}}}})
def checkpoint(job_id: JobId, service: Service, background: BackgroundTasks) -> FileResponse:
    return _archive(service, job_id, None, background)


@jobs.get("/{job_id}/trials/{number}/checkpoint", response_class=FileResponse,
          responses={200: {"content": {"application/gzip": {}}}})
def trial_checkpoint(job_id: JobId, number: Annotated[int, PathParam(ge=0, le=MAX_OFFSET)],
                     service: Service, background: BackgroundTasks) -> FileResponse:
    """A kept trial's checkpoint (a Pareto-front member, one of the best `keep_trials`)."""
    return _archive(service, job_id, number, background)


@jobs.get("/{job_id}/deployable/checkpoint", response_class=FileResponse,
          responses={200: {"content": {"application/gzip": {}}}})
def deployable_checkpoint(job_id: JobId, service: Service,
                          background: BackgroundTasks) -> FileResponse:
    """The deployable model of the job's distill stage: the distilled student, its ONNX and
    (when it passed) int8 files, and the card comparing it with the teacher."""
    return _archive(service, job_id, None, background, deployable=True)


@jobs.get("/{job_id}/pareto", response_model=ParetoView)
def pareto(job_id: JobId, service: Service) -> ParetoView:
    """The Pareto front of the metric against the job's costs: scored on the test split once
    the job has ended, the front so far until then."""
    return service.pareto(job_id)


def _archive(service: JobService, job_id: str, trial: int | None,
             background: BackgroundTasks, deployable: bool = False) -> FileResponse:
    """The archive is built in a folder of its own, removed once it is sent, or at once when
    the request is refused (FastAPI runs no background task of a failed request)."""
    folder = Path(tempfile.mkdtemp(prefix="automl-archive-"))
    try:
        archive = service.checkpoint_archive(job_id, folder, trial, deployable)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    background.add_task(shutil.rmtree, folder, True)
    return FileResponse(archive, media_type="application/gzip", filename=archive.name)
