"""The job service on the database itself: what the REST API serves, and what the CLI uses when
no API is configured. Missing jobs and refused requests become the user errors of
`automl.errors` here, worded for the user."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import optuna

from automl.errors import JobConflict, NotReady, PullError, UnknownJob
from automl.jobs.publish import pull
from automl.search import keys
from automl.search.keys import state_name
from automl.search.spec import JobSpec, new_job_id
from automl.service.views import Best, BestView, Counts, JobPage, JobView, TrialPage, TrialView
from automl.settings import Settings
from storage.jobs import JobStore
from storage.models import Job
from storage.optuna_storage import optuna_storage, trial_page


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore | None = None,
        studies: optuna.storages.BaseStorage | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or JobStore(settings.storage_url)
        self._studies = studies

    @property
    def studies(self) -> optuna.storages.BaseStorage:
        """The Optuna storage (opened on first use: listing jobs does not need it)."""
        if self._studies is None:
            self._studies = optuna_storage(self.settings.storage_url, retry_seconds=5)
        return self._studies

    def submit(self, spec: JobSpec) -> JobView:
        job_id = new_job_id(spec.name)
        return self.view(self.store.submit(job_id, spec.name, spec.model_dump(mode="json")))

    def list_jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        jobs, total = self.store.list_jobs(state, limit, offset)
        return JobPage(jobs=[self.view(j) for j in jobs], total=total, limit=limit, offset=offset)

    def get(self, job_id: str) -> JobView:
        return self.view(self._job(job_id))

    def cancel(self, job_id: str) -> JobView:
        job, taken = self.store.request_cancel(job_id)
        if job is None:
            raise UnknownJob(job_id)
        if not taken:
            raise JobConflict(f"job {job_id} already {job.state}; nothing to cancel")
        return self.view(job)

    def resume(self, job_id: str) -> JobView:
        job, taken = self.store.requeue(job_id)
        if job is None:
            raise UnknownJob(job_id)
        if not taken:
            raise JobConflict(f"job {job_id} is {job.state}; only a failed or cancelled job can "
                              "be resumed")
        return self.view(job)

    def trials(self, job_id: str, limit: int = 100, offset: int = 0) -> TrialPage:
        self._job(job_id)  # unknown ids are a 404, not an empty page
        try:
            study_id = self.studies.get_study_id_from_name(job_id)
        except KeyError:  # not started yet
            return TrialPage(trials=[], total=0, limit=limit, offset=offset)
        trials, total = trial_page(self.studies, study_id, limit, offset)
        return TrialPage(trials=[_trial_view(t) for t in trials], total=total, limit=limit,
                         offset=offset)

    def best(self, job_id: str) -> BestView:
        job = self._job(job_id)
        study = self._study(job_id)
        number = None if study is None else study.user_attrs.get(keys.BEST_TRIAL)
        if study is None or number is None:
            raise NotReady(f"job {job_id} is {job.state}: it has no published best trial yet")
        study_id = self.studies.get_study_id_from_name(job_id)
        trial = self.studies.get_trial(
            self.studies.get_trial_id_from_study_id_trial_number(study_id, number))
        return BestView(job=job_id, trial=number, objective=job.spec["objective"]["metric"],
                        value=trial.value, config=trial.user_attrs.get(keys.CONFIG, {}),
                        test_metrics=study.user_attrs.get(keys.TEST_METRICS, {}))

    def pull(self, job_id: str, out: Path) -> Path:
        """A job that has not succeeded has nothing to pull; a study with no job row (written by
        other means) is looked up by its study alone."""
        job = self.store.find(job_id)
        if job is not None and job.state != "succeeded":
            raise NotReady(f"job {job_id} is {job.state}: it has no published best trial yet")
        return pull(self.studies, self.settings.artifacts_path, job_id, out)

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

    def view(self, job: Job) -> JobView:
        return JobView(
            id=job.id, name=job.name, state=job.state,
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            cancel_requested=job.cancel_requested, error=job.error, study=job.id,
            trials=Counts(running=job.n_running, complete=job.n_complete, pruned=job.n_pruned,
                          failed=job.n_failed, budget=job.spec["budget"]["n_trials"]),
            objective=job.spec["objective"]["metric"],
            best=Best(trial=job.best_trial, value=job.best_value),
            test_metrics=job.test_metrics,
            dashboard=self._dashboard_link(job),
        )

    def _job(self, job_id: str) -> Job:
        job = self.store.find(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

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


def _trial_view(t: optuna.trial.FrozenTrial) -> TrialView:
    return TrialView(
        number=t.number, state=state_name(t.state), value=t.value,
        epochs=len(t.intermediate_values),
        intermediate_values={str(k): v for k, v in sorted(t.intermediate_values.items())},
        params=t.params, config=t.user_attrs.get(keys.CONFIG, {}),
        started_at=t.datetime_start, finished_at=t.datetime_complete,
    )

