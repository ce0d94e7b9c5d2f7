"""The control plane's user errors, all `UserError`s (one type for everything a user can fix,
shared with the trial engine: see workers/errors.py).

The storage layer signals a missing job or a refused state change by what it returns; the job
service turns that into these, with the wording and the fix a user needs.
"""

from __future__ import annotations

from workers.errors import UserError

__all__ = ["ApiError", "JobConflict", "JobError", "NotReady", "PublishError", "PullError",
           "SpecError", "UnknownJob", "UserError"]


class SpecError(UserError, ValueError):
    """An invalid job spec; the message lists every problem, each with its field."""


class JobError(UserError):
    """The job cannot run as asked (more GPUs per trial than the cluster has, a dataset that
    cannot be read, weights no machine can fetch)."""


class UnknownJob(UserError, LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job id {job_id!r}; list jobs with `automl list`")
        self.job_id = job_id


class JobConflict(UserError):
    """The job's state does not allow the request (cancelling a finished job)."""


class NotReady(UserError):
    """The job has no published best trial yet (queued, running, failed or cancelled)."""


class PublishError(UserError):
    """The job's best model could not be published (a full or unwritable artifact store) and
    nothing of it was: the job fails, and succeeds once resumed after the fix. Not a JobError,
    which is a job refused before it ran."""


class PullError(UserError, LookupError):
    """The job's checkpoint cannot be found where asked; the message says where to look."""


class ApiError(UserError):
    """The API refused a request (its status and detail), or could not be reached (status 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class PushError(UserError, RuntimeError):
    """The model folder cannot be uploaded to the Hugging Face Hub; the message says the fix."""
