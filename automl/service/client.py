"""The HTTP implementation of the service's `Backend`: the same methods and views as
`JobService`, over the REST API."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import httpx

from automl.errors import ApiError
from automl.search.spec import JobSpec
from automl.service.views import BestView, JobPage, JobView, ParetoView, TrialPage


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def submit(self, spec: JobSpec) -> JobView:
        return JobView.model_validate(self._json("POST", "/jobs", json=spec.model_dump(mode="json")))

    def list_jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return JobPage.model_validate(self._json("GET", "/jobs", params=params))

    def get(self, job_id: str) -> JobView:
        return JobView.model_validate(self._json("GET", f"/jobs/{job_id}"))

    def trials(self, job_id: str, limit: int = 100, offset: int = 0) -> TrialPage:
        return TrialPage.model_validate(self._json("GET", f"/jobs/{job_id}/trials",
                                                   params={"limit": limit, "offset": offset}))

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._json("POST", f"/jobs/{job_id}/cancel"))

    def resume(self, job_id: str) -> JobView:
        return JobView.model_validate(self._json("POST", f"/jobs/{job_id}/resume"))

    def best(self, job_id: str) -> BestView:
        return BestView.model_validate(self._json("GET", f"/jobs/{job_id}/best"))

    def pareto(self, job_id: str) -> ParetoView:
        return ParetoView.model_validate(self._json("GET", f"/jobs/{job_id}/pareto"))

    def pull(self, job_id: str, out: Path, trial: int | None = None,
             deployable: bool = False) -> Path:
        """Download the best checkpoint archive (or `trial`'s, or the deployable model's) and
        unpack it into `out`."""
        route = (f"/jobs/{job_id}/deployable/checkpoint" if deployable
                 else f"/jobs/{job_id}/best/checkpoint" if trial is None
                 else f"/jobs/{job_id}/trials/{trial}/checkpoint")
        response = self._request("GET", route)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            tar.extractall(out, filter="data")  # refuses absolute paths, links out, devices
        return out

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(
                0,
                f"cannot reach the automl API at {self.base_url} ({error}); start it with "
                "`automl serve`, or fix --api / AUTOML_API_URL",
            ) from error
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(detail, list):  # FastAPI's 422: one entry per bad field
        parts = []
        for item in detail:
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg', '')}".removeprefix(": "))
        detail = "; ".join(parts)
    return f"{detail} (HTTP {response.status_code})"
