"""What the job says of a tracking store that cannot be used: never what its server answered."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from automl.errors import JobError
from automl.tune.tracking.runs import JobRuns

SECRET = "SECRET-INTERNAL-PAGE hunter2"


@pytest.fixture
def answering() -> Iterator[dict[str, tuple[int, str]]]:
    """A local HTTP server answering every request with the (status, body) set in the dict."""
    answer = {"now": (200, "")}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer["now"]
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body.encode())

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answer["uri"] = (0, f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield answer
    finally:
        server.shutdown()


@pytest.mark.parametrize(("status", "body", "said"), [
    (500, f"<html>{SECRET}</html>", "HTTP 500 (not an MLflow answer)"),
    (404, f"<html>{SECRET}</html>", "HTTP 404 (not an MLflow answer)"),
    (403, '{"error_code": "PERMISSION_DENIED", "message": "' + SECRET + '"}',
     "HTTP 403 (PERMISSION_DENIED)"),
    (200, f"<html>{SECRET}</html>", "HTTP 200 but not an MLflow answer (not JSON)"),
])
def test_a_servers_answer_never_reaches_the_jobs_error(
    answering: dict[str, tuple[int, str]], monkeypatch: pytest.MonkeyPatch,
    status: int, body: str, said: str
) -> None:
    """A tracking URI may name any service the driver reaches; a job's error is read back
    over HTTP by whoever submitted it. MLflow's message quotes the response body."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    answering["now"] = (status, body)
    uri = answering["uri"][1]
    with pytest.raises(JobError) as caught:
        JobRuns(uri, "automl", "job-1")
    message = str(caught.value)
    assert message.startswith(f"cannot use the MLflow tracking store {uri}: {said}; start the "
                              "server"), message
    assert "SECRET" not in message and "hunter2" not in message
