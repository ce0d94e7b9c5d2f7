"""The REST API in-process (automl/service/api.py): validation answers, errors as JSON, no 500s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from automl.service.api import create_app
from automl.settings import Settings
from tests.service.conftest import AUTH, SPEC, guarded_client


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


def test_a_database_outage_is_a_503_with_retry_after(pg_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from tests.support import proxy_to

    target = make_url(pg_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy, TestClient(
            create_app(Settings(home=tmp_path, database_url=proxy.url_for(pg_url)))) as client:
        assert client.get("/jobs").status_code == 200
        proxy.cut()
        away = client.get("/jobs")
        assert away.status_code == 503 and away.headers["Retry-After"] == "5", away.text
        assert away.json()["detail"].startswith("database unavailable, retry shortly")
        proxy.restore()
        assert client.get("/jobs").status_code == 200


def test_openapi_is_served(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/trials", "/jobs/{job_id}/cancel",
            "/jobs/{job_id}/best", "/jobs/{job_id}/best/checkpoint",
            "/jobs/{job_id}/deployable/checkpoint", "/healthz"} <= set(paths)


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
    assert len(operations) == 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()


def test_no_server_errors_with_the_token_either(pg_url: str, tmp_path: Path) -> None:
    """Schemathesis again, past the token, on PostgreSQL (what a deployment runs)."""
    roots = tmp_path / "datasets"
    roots.mkdir()
    app = create_app(Settings(home=tmp_path, database_url=pg_url, api_token="s3cret",
                              dataset_roots=(roots,)))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for operation in [result.ok() for result in schema.get_all_operations()]:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, checks=[not_a_server_error])

        no_server_error()


@pytest.mark.parametrize(("body", "field"), [
    ('{"name": "x", "dataset": {"source": "builtin:digits"}, "budget": {"time_limit": Infinity}}',
     "budget.time_limit"),
    ('{"name": "x", "dataset": {"source": "builtin:digits"}, "space": {"lr": NaN}}', "space.lr"),
    ('{"name": "x", "dataset": {"source": "builtin:digits"}, "budget": {"target": NaN}}',
     "budget.target"),
])
def test_non_finite_numbers_are_refused_as_bad_input(client: TestClient, body: str,
                                                    field: str) -> None:
    """PostgreSQL cannot store them: accepted, they came back as a 503 'database unavailable'."""
    response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text
    assert client.get("/jobs").json()["total"] == 0


def test_a_422_echoes_no_more_than_an_excerpt_of_the_input(client: TestClient) -> None:
    huge = "x" * 200_000
    response = client.post("/jobs", json={**SPEC, "space": {"backbone": huge}})
    assert response.status_code == 422
    assert len(response.content) < 2_000, len(response.content)
    response = client.post("/jobs", json={**SPEC, "budget": {"n_trials": huge}})
    assert response.status_code == 422 and len(response.content) < 2_000
    # field names are input too: 50 unknown keys of 19 KB each made a 954 KB answer
    keys = {f"{i}{'k' * 19_000}": 1 for i in range(50)}
    for body in ({**SPEC, **keys}, {**SPEC, "dataset": {**SPEC["dataset"], **keys}},
                 {**SPEC, "objective": {"limits": keys}}):
        response = client.post("/jobs", json=body)
        assert response.status_code == 422, response.text[:500]
        assert len(response.content) < 12_000, len(response.content)
        for error in response.json()["detail"]:
            assert all(len(part) <= 70 for part in error["loc"]), error["loc"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"strategy": {"sampler": "tpe", "sampler_options": {"n_ei_candidates": 1_000_000_000}}},
     "strategy.sampler_options.n_ei_candidates"),
    ({"strategy": {"sampler": "tpe", "sampler_options": {"n_ei_candidates": 1e9}}},
     "strategy.sampler_options.n_ei_candidates"),
    ({"strategy": {"sampler": "tpe", "sampler_options": {"gamma": "x"}}},
     "strategy.sampler_options.gamma: not an option"),
    ({"strategy": {"sampler": "cmaes", "sampler_options": {"popsize": [1, 2]}}},
     "strategy.sampler_options.popsize"),
    ({"strategy": {"pruner": "median", "pruner_options": {"n_warmup_steps": 10**9}}},
     "strategy.pruner_options.n_warmup_steps"),
    ({"strategy": {"pruner": "sha", "pruner_options": {"bootstrap_count": 10**12}}},
     "strategy.pruner_options.bootstrap_count"),
    ({"dataset": {"source": "builtin:digits", "split_seed": -1}}, "dataset.split_seed"),
    ({"dataset": {"source": "builtin:digits", "split_seed": 2**40}}, "dataset.split_seed"),
    ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "step": "abc"}}}, "space.lr: step"),
    ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "step": 0}}}, "space.lr: step"),
    ({"space": {"ra_num_ops": {"low": 1, "high": 3, "step": -8}}}, "space.ra_num_ops: step"),
    ({"space": {"ra_num_ops": {"low": 1, "high": 3, "step": 0.5}}}, "space.ra_num_ops"),
    ({"space": {"batch_size": 4096, "img_size": 1024}}, "space.batch_size"),
    ({"space": {"batch_size": [8, 4096], "img_size": {"low": 64, "high": 1024}}},
     "space.img_size"),
    ({"space": {"batch_size": 4096}}, "space.batch_size"),  # at the backbones' own sides
    ({"space": {"num_workers": 100_000}}, "space.num_workers"),
    ({"space": {"img_size": 1_000_000}}, "space.img_size"),
    ({"space": {"batch_size": 1_000_000_000}}, "space.batch_size"),
    ({"max_concurrent_trials": 1024, "resources": {"cpu": 0.001}}, "max_concurrent_trials"),
    ({"resources": {"cpu": 0.001}}, "resources.cpu"),
    ({"max_failures": 10_000}, "max_failures"),
    ({"budget": {"time_limit": "100000d"}}, "budget.time_limit"),
])
def test_settings_that_would_exhaust_the_cluster_are_refused(
    client: TestClient, changes: dict[str, Any], field: str
) -> None:
    response = client.post("/jobs", json={**SPEC, **changes})
    assert response.status_code == 422, response.text
    assert field in response.text or field.split(".")[-1] in response.text, response.text


def test_a_body_nested_20000_deep_is_one_line_4xx_and_the_service_serves_on(
    tmp_path: Path
) -> None:
    """JSON's parser has no aliases to expand, and refuses what its recursion cannot read."""
    with guarded_client(tmp_path) as client:
        for depth in (20_000, 40):
            body = ('{"name": "t", "dataset": {"source": "builtin:digits"}, "space": {"lr": '
                    + "[" * depth + "]" * depth + "}}")
            response = client.post("/jobs", headers={**AUTH, "Content-Type": "application/json"},
                                   content=body)
            assert 400 <= response.status_code < 500, response.text
            assert "\n" not in response.text and len(response.text) < 600, response.text
        assert "nested deeper than 32 levels" in response.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/jobs", headers=AUTH).json()["total"] == 0


@pytest.mark.parametrize("roots", [True, False])
@pytest.mark.parametrize(("changes", "field"), [
    ({"dataset": {"source": "/datasets/a\x00b"}}, "dataset.source"),
    ({"dataset": {"source": "builtin:digits\x00"}}, "dataset.source"),
    ({"dataset": {"source": "builtin:digits", "image_column": "im\x00ge"}}, "dataset.image_column"),
    ({"tracking": {"mlflow": "http://mlflow:5000\x00"}}, "tracking.mlflow"),
    ({"tracking": {"mlflow": "http://mlflow:5000\r\nHost: x"}}, "tracking.mlflow"),
    ({"tracking": {"experiment": "a\tb"}}, "tracking.experiment"),
    ({"space": {"pretrained": "/datasets/w\x00.pth"}}, "space.pretrained"),
    ({"space": {"backbone": ["resnet18", "res\x1bnet"]}}, "space.backbone[1]"),
    ({"strategy": {"sampler_options": {"n\x00": 1}}}, "strategy.sampler_options: a key"),
])
def test_a_control_character_is_refused_by_name_never_a_server_error(
    tmp_path: Path, roots: bool, changes: dict[str, Any], field: str
) -> None:
    """A NUL in a path was a 500 (the file system refuses it); every string of a spec is
    free of control characters, or the spec is a 422 naming the field."""
    (tmp_path / "datasets").mkdir()
    settings: dict[str, Any] = {"dataset_roots": (tmp_path / "datasets",)} if roots else {}
    with guarded_client(tmp_path, **settings) as client:
        response = client.post("/jobs", headers=AUTH, json={**SPEC, **changes})
        assert response.status_code == 422, response.text
        assert f"{field}: holds a control character" in response.text or (
            f"{field} holds a control character" in response.text), response.text
