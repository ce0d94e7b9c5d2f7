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
