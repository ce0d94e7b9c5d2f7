"""What went wrong with an MLflow tracking store, in words an error or a log line may carry."""

from __future__ import annotations

import re

from workers.errors import first_line

_REMOTE = re.compile(r"^(https?|databricks)://", re.IGNORECASE)
# MLflow's words for a non-JSON answer, and urllib3's for one its retries gave up on
_HTTP_STATUS = re.compile(r"failed with error code (\d{3})|too many (\d{3}) error responses")


def failure(uri: str, error: BaseException) -> str:
    """What went wrong with the tracking store, for an error or a log line (which a job's error
    may quote). For a server: the HTTP status or the exception's type, never the message,
    which MLflow builds from the server's answer: a tracking URI may name any service the
    driver can reach, and its response must not come back to whoever named it."""
    if not _REMOTE.match(uri):
        return first_line(error, 300)  # a local store: the client's own words
    from mlflow.exceptions import MlflowException, RestException

    status = _HTTP_STATUS.search(str(error))
    if status is not None:
        return f"HTTP {status.group(1) or status.group(2)} (not an MLflow answer)"
    if isinstance(error, RestException):
        return f"HTTP {error.get_http_status_code()} ({error.error_code})"
    if isinstance(error, MlflowException) and "not in a valid JSON format" in str(error):
        return "HTTP 200 but not an MLflow answer (not JSON)"
    if isinstance(error, MlflowException) and "failed with exception" in str(error):
        return "no answer (the connection failed)"
    if isinstance(error, MlflowException):
        return f"{type(error).__name__} ({error.error_code})"
    return type(error).__name__
