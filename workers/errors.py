"""The one error type for what a user can fix.

Its message names the problem and the fix; the CLI prints it as one line and exits with
`exit_code`, the API answers it with a 4xx. Anything else raised is a bug and keeps its
traceback. It lives in the data plane, the plane every other one may import, so the trial
engine's errors (a setting, a dataset, a checkpoint, an export) and the control plane's
(`automl.errors`) share it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 2


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message, as one-line reports quote it: the database
    driver's own words where SQLAlchemy wraps them (`orig`), the error's type where it says
    nothing; at most `limit` characters."""
    if isinstance(error, str):
        text, silent = error.strip(), ""
    else:
        text, silent = str(getattr(error, "orig", None) or error).strip(), type(error).__name__
    return (text.splitlines()[0] if text else silent)[:limit]


def last_line(error: BaseException | str, limit: int | None = None) -> str:
    """The last non-blank line of an error's message, stripped: where a traceback says what
    went wrong. The error's type where it says nothing ("" for a blank text); at most `limit`
    characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    silent = "" if isinstance(error, str) else type(error).__name__
    return (lines[-1] if lines else silent)[:limit]
