"""Running a stored job: the job row follows the search (heartbeat, progress, cancel, outcome).

Used by `automl run` (a job row created in the foreground) and by the runner's per-job process.
A heartbeat thread writes trial counts and the best value every few seconds from the Optuna
storage (cheap counting queries, not a scan of every trial) and reads the cancel flag back.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any

import optuna
from optuna.trial import TrialState

from automl.bridge import Events
from automl.job import JobError, JobOutcome, run_job
from automl.settings import Settings
from automl.spec import parse_spec
from storage.jobs import JobStore, Progress
from storage.optuna_storage import optuna_storage

HEARTBEAT_SECONDS = 2.0


def read_progress(storage: optuna.storages.BaseStorage, job_id: str) -> Progress | None:
    try:
        study_id = storage.get_study_id_from_name(job_id)
    except KeyError:
        return None
    counts = {state: storage.get_n_trials(study_id, state) for state in (
        TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    try:
        best = storage.get_best_trial(study_id)
        best_trial, best_value = best.number, best.value
    except ValueError:  # nothing complete yet
        best_trial, best_value = None, None
    return Progress(
        n_running=counts[TrialState.RUNNING],
        n_complete=counts[TrialState.COMPLETE],
        n_pruned=counts[TrialState.PRUNED],
        n_failed=counts[TrialState.FAIL],
        best_trial=best_trial,
        best_value=best_value,
    )


class _Heartbeat(threading.Thread):
    def __init__(self, store: JobStore, storage: optuna.storages.BaseStorage, job_id: str) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.store, self.storage, self.job_id = store, storage, job_id
        self.cancel = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                if self.store.heartbeat(self.job_id, read_progress(self.storage, self.job_id)):
                    self.cancel.set()
            except Exception:  # a database blip: the next beat tries again
                continue


def resume_hint(job_id: str, job_file: str = "JOB_FILE") -> str:
    return f"resume it with `automl run {job_file} --job-id {job_id}`"


def execute_job(
    job_id: str, settings: Settings, store: JobStore, events: Events | None = None,
    **run_options: Any,
) -> JobOutcome:
    job = store.get(job_id)
    spec = parse_spec(job.spec, f"job {job_id}")
    storage = optuna_storage(settings.storage_url)
    beat = _Heartbeat(store, storage, job_id)
    beat.start()
    try:
        outcome = run_job(spec, job_id, settings, events=events, cancelled=beat.cancel.is_set,
                          **run_options)
    except KeyboardInterrupt:
        beat.done.set()
        store.finish(job_id, "cancelled", error=f"interrupted; {resume_hint(job_id)}",
                     progress=read_progress(storage, job_id))
        raise
    except BaseException as error:
        beat.done.set()
        message = (str(error) if isinstance(error, JobError)  # written for the user as is
                   else "".join(traceback.format_exception_only(error)).strip())
        store.finish(job_id, "failed", error=message, progress=read_progress(storage, job_id))
        raise
    beat.done.set()
    store.finish(
        job_id,
        outcome.state,
        error=outcome.error,
        progress=read_progress(storage, job_id),
        test_metrics=outcome.test_metrics or None,
    )
    return outcome
