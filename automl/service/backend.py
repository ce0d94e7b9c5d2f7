"""One protocol for what a user asks of the service, with two implementations: `JobService`
on the database itself, and `ApiClient` over HTTP. The CLI picks one (`backend_for`) and renders
the same views from either."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from automl.search.spec import JobSpec
from automl.service.views import BestView, JobPage, JobView, ParetoView, TrialPage
from automl.settings import Settings


class Backend(Protocol):
    def submit(self, spec: JobSpec) -> JobView: ...

    def list_jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> JobPage: ...

    def get(self, job_id: str) -> JobView: ...

    def cancel(self, job_id: str) -> JobView: ...

    def resume(self, job_id: str) -> JobView: ...

    def trials(self, job_id: str, limit: int = 100, offset: int = 0) -> TrialPage: ...

    def best(self, job_id: str) -> BestView: ...

    def pareto(self, job_id: str) -> ParetoView: ...

    def pull(self, job_id: str, out: Path, trial: int | None = None,
             deployable: bool = False) -> Path:
        """The best checkpoint and its reports (or a kept trial's) into `out`; all files or
        none."""
        ...


def backend_for(settings: Settings, connect_seconds: float = 5.0) -> Backend:
    """The API client when an API is configured (`AUTOML_API_URL`), else the job service on the
    configured database."""
    if settings.api_url:
        from automl.service.client import ApiClient

        return ApiClient(settings.api_url, settings.api_token)
    from automl.service.service import JobService
    from storage.jobs import JobStore

    return JobService(settings, JobStore(settings.storage_url, connect_seconds=connect_seconds))
