"""The API's front door (automl/service/guard.py): the token, then the body's size, both decided
before the body is read."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from automl.service.api import create_app
from automl.settings import Settings
from tests.service.conftest import SPEC, guarded_client, live_api, raw_request


def test_token_required_everywhere_but_healthz(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, api_token="s3cret"))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            denied = client.get("/jobs", headers=headers)
            assert denied.status_code == 401
            assert "AUTOML_API_TOKEN" in denied.json()["detail"]
            assert client.post("/jobs", json=SPEC, headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.get("/jobs", headers=ok).status_code == 200
        assert client.post("/jobs", json=SPEC, headers=ok).status_code == 201


def test_a_non_ascii_token_is_refused_not_a_server_error(tmp_path: Path) -> None:
    with guarded_client(tmp_path) as client:
        for route in ("/jobs", "/jobs/x", "/jobs/x/trials"):
            response = client.get(route, headers={"Authorization": "Bearer café".encode()})
            assert response.status_code == 401, route


def test_an_oversized_or_unauthenticated_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """The answer comes while the client has sent only its headers: the server read nothing."""
    settings = Settings(home=tmp_path, api_token="s3cret", max_body_bytes=4096)
    with live_api(settings) as address:
        big = "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        unauthenticated = raw_request(address, big + "Content-Length: 52428800")
        assert unauthenticated.startswith("HTTP/1.1 401"), unauthenticated
        oversized = raw_request(address, big + "Authorization: Bearer s3cret\r\n"
                                "Content-Length: 52428800")
        assert oversized.startswith("HTTP/1.1 413") and "AUTOML_MAX_BODY_BYTES" in oversized
        chunk = b"x" * 5000
        chunked = raw_request(address, big + "Authorization: Bearer s3cret\r\n"
                              "Transfer-Encoding: chunked",
                              f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        assert chunked.startswith("HTTP/1.1 413"), chunked
