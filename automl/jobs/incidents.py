"""What a job's row says of an error: one line, read back by whoever sent the job (`GET
/jobs/{id}`, `automl status`).

A user error (`UserError`: a dataset that cannot be read, a spec no cluster can run) is written
for the user, and is shown as written. Anything else is a bug or a fault of the service, and its
text is the service's own: a traceback (a RayTaskError's text is a whole one), paths on the
server, a database host. The row then says only that an internal error happened, its type, and
an incident id; the traceback is in the driver's log under that id (logs/JOB.log on a runner),
where the operator finds it.
"""

from __future__ import annotations

import secrets

from workers.errors import UserError


def one_line(text: str) -> str:
    """A message on one line: a list of problems (a spec's) joined, whitespace runs closed."""
    return " ".join(text.split())


def user_message(error: BaseException) -> str | None:
    """The message of a user error, also one a Ray task raised (Ray wraps it; `cause` is it);
    None for any other error."""
    for candidate in (getattr(error, "cause", None), error):
        if isinstance(candidate, UserError):
            return one_line(str(candidate))
    return None


def kind(error: BaseException) -> str:
    """The error's type, a Ray task's own rather than Ray's wrapping."""
    return type(getattr(error, "cause", None) or error).__name__


def new_incident() -> str:
    return secrets.token_hex(4)


def in_the_log(job_id: str) -> str:
    return f"the traceback is in its driver's log under that id (logs/{job_id}.log on its runner)"


def error_line(error: BaseException, job_id: str) -> str:
    """The row's line for an error that ends the job's driver. An internal one keeps its
    traceback where the process reports it (the job's log on a runner, the terminal of `automl
    run`), with the incident id added as a note, so the id leads from the line to it."""
    message = user_message(error)
    if message is not None:
        return message
    incident = new_incident()
    error.add_note(f"internal error {incident} of job {job_id}")
    return f"internal error {incident}: {kind(error)}; {in_the_log(job_id)}"
