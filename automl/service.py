"""What the service does with jobs, as plain JSON-ready dicts: the REST API returns them as they
are, and the CLI renders the same shapes whether it talks to the API or to the storage directly.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import optuna

from automl.publish import BEST_TRIAL_ATTR, PullError, pull
from automl.settings import Settings
from automl.spec import JobSpec, new_job_id
from storage.jobs import JobConflict, JobStore, UnknownJob
from storage.models import Job
from storage.optuna_storage import optuna_storage

__all__ = ["JobConflict", "JobService", "NotReady", "UnknownJob"]


class NotReady(RuntimeError):
    """The job has no best trial yet (queued, running, failed or cancelled)."""


class JobService:
    def __init__(self, settings: Settings, store: JobStore | None = None) -> None:
        self.settings = settings
        self.store = store or JobStore(settings.storage_url)
        self._optuna: optuna.storages.BaseStorage | None = None

    @property
    def studies(self) -> optuna.storages.BaseStorage:
        """The Optuna storage (opened on first use: listing jobs does not need it)."""
        if self._optuna is None:
            self._optuna = optuna_storage(self.settings.storage_url, retry_seconds=5)
        return self._optuna

    def submit(self, spec: JobSpec) -> dict[str, Any]:
        job_id = new_job_id(spec.name)
        self.store.submit(job_id, spec.name, spec.model_dump(mode="json"))
        return self.get(job_id)

    def list_jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        jobs, total = self.store.list_jobs(state, limit, offset)
        return {"jobs": [self.view(j) for j in jobs], "total": total, "limit": limit,
                "offset": offset}

    def get(self, job_id: str) -> dict[str, Any]:
        return self.view(self.store.get(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.view(self.store.request_cancel(job_id))

    def resume(self, job_id: str) -> dict[str, Any]:
        return self.view(self.store.requeue(job_id))

    def trials(self, job_id: str) -> list[dict[str, Any]]:
        self.store.get(job_id)  # unknown ids are a 404, not an empty list
        study = self._study(job_id)
        if study is None:
            return []
        return [
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "epochs": len(t.intermediate_values),
                "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                "params": t.params,
                "config": t.user_attrs.get("config", {}),
                "started_at": _iso(t.datetime_start),
                "finished_at": _iso(t.datetime_complete),
            }
            for t in study.get_trials(deepcopy=False)
        ]

    def best(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        study = self._study(job_id)
        number = None if study is None else study.user_attrs.get(BEST_TRIAL_ATTR)
        if study is None or number is None:
            raise NotReady(f"job {job_id} is {job.state}: it has no published best trial yet")
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        return {
            "job": job_id,
            "trial": number,
            "objective": job.spec["objective"]["metric"],
            "value": trial.value,
            "config": trial.user_attrs.get("config", {}),
            "test_metrics": study.user_attrs.get("test_metrics", {}),
        }

    def checkpoint_archive(self, job_id: str, folder: Path) -> Path:
        """The best checkpoint and its reports as `JOB.tar.gz` in `folder`."""
        self.best(job_id)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = pull(self.studies, self.settings.artifacts_path, job_id,
                             Path(tmp) / job_id)
            except PullError as error:
                raise NotReady(str(error)) from error
            archive = folder / f"{job_id}.tar.gz"
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(files.iterdir()):
                    tar.add(path, arcname=path.name)
        return archive

    def view(self, job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "name": job.name,
            "state": job.state,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "cancel_requested": job.cancel_requested,
            "error": job.error,
            "study": job.id,
            "trials": {
                "running": job.n_running,
                "complete": job.n_complete,
                "pruned": job.n_pruned,
                "failed": job.n_failed,
                "budget": job.spec["budget"]["n_trials"],
            },
            "objective": job.spec["objective"]["metric"],
            "best": {"trial": job.best_trial, "value": job.best_value},
            "test_metrics": job.test_metrics,
            "dashboard": self._dashboard_link(job),
        }

    def _study(self, job_id: str) -> optuna.Study | None:
        try:
            return optuna.load_study(study_name=job_id, storage=self.studies)
        except KeyError:
            return None

    def _dashboard_link(self, job: Job) -> str:
        """From the study id the job's driver recorded: a page of jobs costs no study lookup."""
        base = self.settings.dashboard_url.rstrip("/")
        if job.study_id is None:  # not started yet
            return f"{base}/dashboard"
        return f"{base}/dashboard/studies/{job.study_id}"


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()

