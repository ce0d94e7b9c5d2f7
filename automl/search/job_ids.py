"""Job ids: a job id names its study, its Ray run folder and its log file, so it keeps to what
every one of them takes as is."""

from __future__ import annotations

import re
import secrets

from automl.errors import SpecError
from automl.search.validation_errors import excerpt

# `name-xxxxxx` from `new_job_id`, or a `--job-id` of the same form
JOB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"


def check_job_id(job_id: str) -> None:
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise SpecError(
            f"job id {excerpt(job_id, 70)} is not one: lowercase letters, digits and dashes, "
            "starting with a letter or digit, at most 64 characters"
        )


def new_job_id(name: str) -> str:
    """`name-xxxxxx`: readable in the dashboard, unique enough to never collide in practice."""
    return f"{name}-{secrets.token_hex(3)}"
