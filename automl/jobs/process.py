"""The per-job process: a stored job run by its driver, the job row following the search.

`python -m automl.jobs.process JOB` is what a runner starts for each job it claims;
`execute_job` is also what `automl run` calls for a job row created in the foreground. The row
follows the search through the heartbeat (`automl.jobs.heartbeat`). A driver that cannot prove
it still holds its job when it ends writes nothing, even when its search had finished. A driver
that lost its job without noticing publishes nothing either: the publication's transaction
checks its claim (`Lease`, fenced by `JobStore.fenced`), and a refused one ends the driver as a
lost heartbeat does.
"""

from __future__ import annotations

import signal
from typing import Any

from automl.errors import PublishError
from automl.jobs.driver import run_job
from automl.jobs.heartbeat import Heartbeat, HeartbeatLost, give_up_seconds, read_progress
from automl.jobs.incidents import error_line
from automl.jobs.outcome import JobOutcome
from automl.search.job_ids import new_job_id
from automl.search.spec import JobSpec, parse_spec
from automl.settings import Settings
from automl.tune.bridge import Events
from storage.jobs import JobStore, Lease, LeaseLost
from storage.optuna_storage import optuna_storage


class HandedBack(RuntimeError):
    """A runner's driver stopped by its runner, which is stopping: the runner hands the job back
    to the queue."""


def resume_hint(job_id: str, job_file: str | None = None) -> str:
    """How the user resumes an interrupted job: the foreground command that ran it, or the
    route a runner's job is queued again by."""
    if job_file is not None:
        return f"resume it with `automl run {job_file} --job-id {job_id}`"
    return f"resume it with `automl resume {job_id}` (POST /jobs/{job_id}/resume)"


def start_foreground(store: JobStore, spec: JobSpec, job_id: str | None) -> tuple[str, bool, bool]:
    """The job row of `automl run`: a new job, or with `job_id` that job taken back into the
    foreground (created under that id if there is none). Returns the id, whether it was created,
    and whether the stored spec (which a resumed job keeps) differs from `spec`."""
    spec_json = spec.model_dump(mode="json")
    if job_id is None:
        job_id = new_job_id(spec.name)
    elif (resumed := store.resume(job_id, "foreground")) is not None:
        return job_id, False, resumed.spec != spec_json
    store.submit(job_id, spec.name, spec_json, state="running")
    return job_id, True, False


def execute_job(
    job_id: str, settings: Settings, store: JobStore, events: Events | None = None,
    job_file: str | None = None, spec: JobSpec | None = None, hand_back: bool = False,
    **run_options: Any,
) -> JobOutcome:
    """Run a job whose row exists, the row following it. `spec`: the job's spec, when this
    process has it validated already (the foreground `automl run`); else the stored one is read
    and validated here, once. `hand_back`: the driver of a runner, for which an interrupt means
    that the runner is stopping: the row is left for the runner to hand the job back to the
    queue, not marked cancelled. A driver that cannot prove it still holds the job when it ends
    writes nothing (`HeartbeatLost`), however its search ended."""
    job = store.get(job_id)
    if spec is None or job.spec != spec.model_dump(mode="json"):
        spec = parse_spec(job.spec, f"job {job_id}")
    storage = optuna_storage(settings.storage_url)
    beat = Heartbeat(store, storage, job_id, job.attempts, give_up_seconds(settings))
    beat.start()
    try:
        outcome = run_job(spec, job_id, settings, events=events, cancelled=beat.cancel.is_set,
                          held=beat.held, lease=Lease(job_id, job.attempts), **run_options)
    except LeaseLost as lost:  # this driver no longer holds the job: nothing was published
        beat.done.set()
        if not beat.held():
            raise beat.lost_error() from None
        raise HeartbeatLost(f"job {job_id}: the driver stopped the job: another runner has "
                            "taken the job over, so its publication was refused; the runner "
                            "that took it over resumes it") from lost
    except KeyboardInterrupt:
        beat.done.set()
        if not beat.held():
            raise beat.lost_error() from None
        if hand_back:
            raise HandedBack(f"job {job_id}: interrupted: its runner is stopping and hands it "
                             "back to the queue") from None
        store.finish(job_id, "cancelled", error=f"interrupted; {resume_hint(job_id, job_file)}",
                     progress=read_progress(storage, job_id), attempts=job.attempts)
        raise
    except BaseException as error:
        beat.done.set()
        if not beat.held():  # the row is another driver's now, or unreachable
            raise beat.lost_error() from error
        message = error_line(error, job_id)  # one line: never a traceback, a path, a host
        if isinstance(error, PublishError):  # nothing was published: resuming publishes afresh
            message = f"{message}, then {resume_hint(job_id, job_file)}"
        store.finish(job_id, "failed", error=message, progress=read_progress(storage, job_id),
                     attempts=job.attempts)
        if isinstance(error, PublishError):
            raise PublishError(message) from None
        raise
    beat.done.set()
    if not beat.held():  # the search ended, but another runner may be resuming the job now
        raise beat.lost_error()
    store.finish(
        job_id,
        outcome.state,
        error=outcome.error,
        progress=read_progress(storage, job_id),
        test_metrics=outcome.test_metrics or None,
        attempts=job.attempts,
    )
    return outcome


def main() -> None:
    """`python -m automl.jobs.process JOB`: the process a runner starts for each job it claims."""
    import sys

    from automl.settings import quiet_optuna

    quiet_optuna()
    # how both the heartbeat and the runner stop this driver; a runner started in the
    # background by a shell (`automl runner &`) passes SIGINT on ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    (job_id,) = sys.argv[1:]
    settings = Settings()
    try:
        outcome = execute_job(job_id, settings, JobStore(settings.storage_url), hand_back=True,
                              dataset_roots=settings.dataset_roots)
    except (HeartbeatLost, HandedBack) as error:
        print(error, file=sys.stderr)
        sys.exit(75)  # EX_TEMPFAIL: the job is resumed, not failed
    print(f"job {job_id} {outcome.state}: {outcome.error or ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
