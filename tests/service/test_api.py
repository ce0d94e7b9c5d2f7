"""The REST API in-process: auth, validation, 404/409s, and a property test for 500s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from automl.api import create_app
from automl.settings import Settings

SPEC: dict[str, Any] = {"name": "api", "dataset": {"source": "builtin:digits"},
                        "budget": {"n_trials": 2, "max_epochs": 1}}


@pytest.fixture
def client(pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(home=tmp_path, database_url=pg_url))
    with TestClient(app) as test_client:
        yield test_client


def test_submit_then_inspect(client: TestClient) -> None:
    created = client.post("/jobs", json=SPEC)
    assert created.status_code == 201
    job = created.json()
    assert job["id"].startswith("api-") and job["state"] == "queued"
    assert job["trials"] == {"running": 0, "complete": 0, "pruned": 0, "failed": 0, "budget": 2}
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    page = client.get("/jobs", params={"state": "queued"}).json()
    assert page["total"] == 1 and page["jobs"][0]["id"] == job["id"]
    assert client.get("/jobs", params={"state": "running"}).json()["total"] == 0
    assert client.get(f"/jobs/{job['id']}/trials").json() == []
    best = client.get(f"/jobs/{job['id']}/best")
    assert best.status_code == 409 and "no published best trial" in best.json()["detail"]
    assert client.get(f"/jobs/{job['id']}/best/checkpoint").status_code == 409
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_pagination(client: TestClient) -> None:
    ids = [client.post("/jobs", json=SPEC).json()["id"] for _ in range(3)]
    first = client.get("/jobs", params={"limit": 2}).json()
    second = client.get("/jobs", params={"limit": 2, "offset": 2}).json()
    assert first["total"] == 3 and len(first["jobs"]) == 2 and len(second["jobs"]) == 1
    assert {j["id"] for j in first["jobs"] + second["jobs"]} == set(ids)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({**SPEC, "budget": {"n_trials": 0}}, ["body", "budget", "n_trials"], "greater than"),
        ({**SPEC, "strategy": {"sampler": "bayes"}}, ["body", "strategy", "sampler"], "'tpe'"),
        ({"name": "x"}, ["body", "dataset"], "Field required"),
        ({**SPEC, "space": {"backbone": ["resnet5O"]}}, ["body"], "space.backbone: unknown backbone"),
    ],
)
def test_invalid_specs_are_422_and_store_nothing(
    client: TestClient, body: dict[str, Any], field: list[str], message: str
) -> None:
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"] == field and message in e["msg"] for e in errors), errors
    assert client.get("/jobs").json()["total"] == 0


def test_a_relative_dataset_path_is_refused_over_http(client: TestClient) -> None:
    body = {**SPEC, "dataset": {"source": "data/flowers"}}
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert "relative path; give the absolute path" in response.json()["detail"]
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    "route", ["GET /jobs/nope", "GET /jobs/nope/trials", "POST /jobs/nope/cancel",
              "GET /jobs/nope/best", "GET /jobs/nope/best/checkpoint"],
)
def test_unknown_job_ids_are_404(client: TestClient, route: str) -> None:
    method, path = route.split()
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("unknown job id 'nope'")


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


def test_openapi_is_served(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/trials", "/jobs/{job_id}/cancel",
            "/jobs/{job_id}/best", "/jobs/{job_id}/best/checkpoint", "/healthz"} <= set(paths)


def test_unreachable_database_is_refused_at_start_with_its_url() -> None:
    from storage.jobs import JobStore
    from storage.optuna_storage import DatabaseUnavailable

    down = "postgresql+psycopg2://postgres@127.0.0.1:5999/x"
    with pytest.raises(DatabaseUnavailable, match=r"127.0.0.1:5999.*check that it is running"):
        JobStore(down, connect_seconds=1)


def test_no_500s_anywhere(tmp_path: Path) -> None:
    """Schemathesis generates requests for every operation from the OpenAPI document."""
    app = create_app(Settings(home=tmp_path))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 8

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()
