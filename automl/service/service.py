"""The job service on the database itself: what the REST API serves, and what the CLI uses when
no API is configured. Missing jobs and refused requests become the user errors of
`automl.errors` here, worded for the user."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import optuna

from automl.errors import JobConflict, NotReady, PullError, UnknownJob
from automl.search import keys
from automl.search.dataset_name import dataset_name
from automl.search.job_ids import new_job_id
from automl.search.keys import count_trials, trial_state
from automl.search.ranking import front_member, maximizes, sorted_front
from automl.search.spec import JobSpec
from automl.service.views import (
    Best,
    BestView,
    Counts,
    FrontMember,
    JobPage,
    JobView,
    ParetoView,
    TrialPage,
    TrialView,
)
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
                        value=trial.values[0] if trial.values else None,
                        config=trial.user_attrs.get(keys.CONFIG, {}),
                        test_metrics=study.user_attrs.get(keys.TEST_METRICS, {}),
                        deployable=study.user_attrs.get(keys.DEPLOYABLE))

    def pull(self, job_id: str, out: Path, trial: int | None = None,
             deployable: bool = False) -> Path:
        """The published best, or `trial`'s kept checkpoint (a Pareto-front member, one of the
        best `keep_trials`), or the deployable model of its distill stage. A job that has not
        succeeded has no published best; a study with no job row (written by other means) is
        looked up by its study alone."""
        from automl.jobs.pull import pull  # Ray Tune and the publisher: only a pull needs them

        job = self.store.find(job_id)
        if deployable:
            return self._pull_deployable(job_id, job, out)
        if trial is not None:
            return self._pull_trial(job_id, trial, out)
        if job is not None and job.state != "succeeded":
            raise NotReady(f"job {job_id} is {job.state}: it has no published best trial yet")
        return pull(self.studies, self.settings.artifacts_path, job_id, out)

    def _pull_deployable(self, job_id: str, job: Job | None, out: Path) -> Path:
        from automl.jobs.pull import pull

        study = self._study(job_id)
        if study is None:
            self._job(job_id)  # unknown, or not started yet
            raise NotReady(f"job {job_id} has not started: it has no deployable model yet")
        record = study.user_attrs.get(keys.DEPLOYABLE)
        if record is None:
            spec = job.spec if job is not None else study.user_attrs.get(keys.SPEC, {})
            why = ("its distill stage has not published one (still running, or it failed: "
                   f"`automl status {job_id}`)" if spec.get("distill") else
                   f"it has no distill stage; distill it with `automl distill {job_id}`")
            raise NotReady(f"job {job_id} has no deployable model: {why}")
        return pull(self.studies, self.settings.artifacts_path, record["study"], out)

    def _pull_trial(self, job_id: str, number: int, out: Path) -> Path:
        from automl.jobs.pull import kept_checkpoint_of, pull_checkpoint

        study = self._study(job_id)
        if study is None:
            self._job(job_id)  # unknown, or not started yet
            raise NotReady(f"job {job_id} has no trials yet")
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        frozen = trials.get(number)
        if frozen is None:
            raise PullError(f"job {job_id} has no trial {number}")
        front = {m["trial"]: m for m in study.user_attrs.get(keys.FRONT, [])}
        folder = kept_checkpoint_of(self.settings.runs_path / job_id,
                                    str(frozen.user_attrs.get(keys.RAY_TRIAL_ID)))
        if folder is None:
            kept = sorted(n for n, t in trials.items() if t.state.name == "COMPLETE"
                          and kept_checkpoint_of(self.settings.runs_path / job_id,
                                                 str(t.user_attrs.get(keys.RAY_TRIAL_ID))))
            raise PullError(
                f"trial {number} of job {job_id} has no checkpoint kept (only the best "
                f"checkpoints.keep_trials complete trials, and a Pareto front, keep one); "
                f"trials with one: {', '.join(map(str, kept)) or 'none'}")
        test = front.get(number, {}).get("test_metrics")
        spec = study.user_attrs.get(keys.SPEC, {})
        objective = spec.get("objective", {}).get("metric", "val_accuracy")
        dataset = spec.get("dataset", {})
        counts = count_trials(trials.values())
        return pull_checkpoint(folder, out, job_id, frozen, objective, test, counts,
                               dataset_name(dataset.get("source", "images"), dataset.get("name")))

    def pareto(self, job_id: str) -> ParetoView:
        """From the job row's spec, or the study's own (a study written by `run_job`)."""
        job, study = self.store.find(job_id), self._study(job_id)
        if job is None and study is None:
            raise UnknownJob(job_id)
        spec = job.spec if job is not None else study.user_attrs.get(keys.SPEC, {})  # type: ignore[union-attr]
        objective = spec.get("objective", {})
        metric = objective.get("metric", "val_accuracy")
        costs = [m for m in objective.get("metrics") or [] if m != metric]
        if not costs:
            raise JobConflict(f"job {job_id} optimizes {metric} alone; a Pareto front needs "
                              "objective.metrics, e.g. [val_accuracy, latency_ms]")
        if study is None:
            return ParetoView(job=job_id, metric=metric, costs=costs, final=False, members=[])
        final = study.user_attrs.get(keys.FRONT)
        if final is None:  # the front so far
            final_members = [front_member(t, {})
                             for t in sorted_front(study.best_trials, maximizes(metric))]
        else:
            final_members = final
        members = [FrontMember(trial=m["trial"], metric=m["values"][0], costs=m["costs"],
                               backbone=m["backbone"], img_size=m["img_size"],
                               test_metrics=m["test_metrics"]) for m in final_members]
        return ParetoView(job=job_id, metric=metric, costs=costs, final=final is not None,
                          members=members)

    def checkpoint_archive(self, job_id: str, folder: Path, trial: int | None = None,
                           deployable: bool = False) -> Path:
        """The best checkpoint and its reports (or `trial`'s kept one, or the deployable model)
        as a `.tar.gz` in `folder`."""
        if trial is None and not deployable:
            self.best(job_id)
        name = (f"{job_id}-deployable" if deployable else job_id if trial is None
                else f"{job_id}-trial-{trial}")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files = self.pull(job_id, Path(tmp) / name, trial, deployable)
            except PullError as error:
                raise NotReady(str(error)) from error
            archive = folder / f"{name}.tar.gz"
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
                          failed=job.n_failed, paused=job.n_paused,
                          budget=job.spec["budget"]["n_trials"]),
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
        number=t.number, state=trial_state(t), value=t.values[0] if t.values else None,
        epochs=len(t.intermediate_values),
        intermediate_values={str(k): v for k, v in sorted(t.intermediate_values.items())},
        params=t.params, config=t.user_attrs.get(keys.CONFIG, {}),
        started_at=t.datetime_start, finished_at=t.datetime_complete,
        costs=t.user_attrs.get(keys.COSTS), over_limit=t.user_attrs.get(keys.OVER_LIMIT),
    )

