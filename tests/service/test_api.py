"""The REST API in-process: auth, validation, 404/409s, and a property test for 500s."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from automl.service.api import create_app
from automl.settings import Settings
from tests.support import DIGITS_JOB, backbone_weights, count_spec_work

SPEC: dict[str, Any] = {"name": "api", "dataset": {"source": "builtin:digits"},
                        "budget": {"n_trials": 2, "max_epochs": 1}}


@pytest.fixture
def client(pg_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(home=tmp_path, database_url=pg_url))
    with TestClient(app) as test_client:
        yield test_client


def test_submit_then_inspect(client: TestClient, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # what the routes write
    created = client.post("/jobs", json=SPEC)
    assert created.status_code == 201
    job = created.json()
    assert job["id"].startswith("api-") and job["state"] == "queued"
    assert job["trials"] == {"running": 0, "complete": 0, "pruned": 0, "failed": 0, "budget": 2}
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    page = client.get("/jobs", params={"state": "queued"}).json()
    assert page["total"] == 1 and page["jobs"][0]["id"] == job["id"]
    assert client.get("/jobs", params={"state": "running"}).json()["total"] == 0
    assert client.get(f"/jobs/{job['id']}/trials").json() == {"trials": [], "total": 0,
                                                              "limit": 100, "offset": 0}
    best = client.get(f"/jobs/{job['id']}/best")
    assert best.status_code == 409 and "no published best trial" in best.json()["detail"]
    assert client.get(f"/jobs/{job['id']}/best/checkpoint").status_code == 409
    assert client.get("/jobs/nope/best/checkpoint").status_code == 404
    assert client.get(f"/jobs/{job['id']}/trials/0/checkpoint").status_code == 409
    assert not list((tmp_path / "tmp").iterdir())  # a refused archive leaves no folder behind
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def test_a_job_sent_over_http_is_validated_once(pg_url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The request's body is the validated spec (its space built, every override checked with
    the engine and timm); its weights file is judged under the dataset roots and loaded once."""
    weights = backbone_weights(tmp_path)
    space = {**DIGITS_JOB["space"], "pretrained": str(weights)}
    app = create_app(Settings(home=tmp_path, database_url=pg_url, dataset_roots=(tmp_path,)))
    with TestClient(app) as client, count_spec_work(monkeypatch) as counts:
        created = client.post("/jobs", json={**DIGITS_JOB, "space": space})
    assert created.status_code == 201, created.text
    assert counts == {"validated": 1, "space built": 1, "override checked": len(space),
                      "weights checked": 1}


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
    assert len(operations) == 11

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()


# --- abuse and bad input over HTTP -------------------------------------------------------


def guarded_client(tmp_path: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(home=tmp_path, api_token="s3cret", **settings)))


AUTH = {"Authorization": "Bearer s3cret"}


def test_a_non_ascii_token_is_refused_not_a_server_error(tmp_path: Path) -> None:
    with guarded_client(tmp_path) as client:
        for route in ("/jobs", "/jobs/x", "/jobs/x/trials"):
            response = client.get(route, headers={"Authorization": "Bearer café".encode()})
            assert response.status_code == 401, route


@pytest.mark.parametrize("route", ["GET /jobs/a%00b", "GET /jobs/a%00b/trials",
                                   "POST /jobs/a%00b/cancel", "POST /jobs/a%00b/resume",
                                   "GET /jobs/a%00b/best", "GET /jobs/a%00b/best/checkpoint",
                                   "GET /jobs/A_B"])
def test_a_job_id_no_job_can_have_is_refused_not_a_server_error(client: TestClient,
                                                               route: str) -> None:
    method, path = route.split()
    response = client.request(method, path)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["path", "job_id"]


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


def test_a_weights_file_that_cannot_be_loaded_is_refused_at_submit(tmp_path: Path) -> None:
    """Under the roots, a weights file that is not a state dict is refused at submit: on the
    workers every trial would fail on it, each after its retries."""
    import pickle

    import torch

    roots = tmp_path / "datasets"
    roots.mkdir()
    damaged = roots / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    pickled = roots / "pickled.pth"
    pickled.write_bytes(pickle.dumps({"w": print}))
    torch.save([1, 2, 3], roots / "list.pth")
    torch.save({"epoch": 3, "lr": 0.1}, roots / "numbers.pth")
    torch.save({}, roots / "empty.pth")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, roots / "checkpoint.pth")
    with guarded_client(tmp_path, dataset_roots=(roots,)) as client:
        for weights, message in ((str(damaged), "cannot be read"),
                                 (str(pickled), "pickled objects that are not tensors"),
                                 (str(roots / "list.pth"), "hold a list, not a state dict"),
                                 (str(roots / "numbers.pth"), "hold a dict, not a state dict"),
                                 (str(roots / "empty.pth"), "not a state dict"),
                                 (str(roots / "x.txt"), "must be a .safetensors"),
                                 (str(roots / "missing.pth"), "does not exist")):
            response = client.post("/jobs", headers=AUTH,
                                   json={**SPEC, "space": {"pretrained": weights}})
            assert response.status_code == 422 and message in response.text, response.text
        assert client.get("/jobs", headers=AUTH).json()["total"] == 0
        taken = client.post("/jobs", headers=AUTH,  # what timm loads: a checkpoint's `model`
                            json={**SPEC, "space": {"pretrained": str(roots / "checkpoint.pth")}})
        assert taken.status_code == 201, taken.text


def test_every_path_outside_the_roots_gets_one_answer(tmp_path: Path) -> None:
    """Validation opens no file, and the roots are judged before any is: a weights file or a
    dataset outside them, there or not, loadable or broken, gets the same 422."""
    import safetensors.torch
    import torch

    roots = tmp_path / "datasets"
    roots.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(outside / "good.safetensors"))
    (outside / "broken.safetensors").write_bytes(b"SECRET_API_KEY=hunter2")
    (outside / "data").mkdir()
    (roots / "escape.safetensors").symlink_to(outside / "good.safetensors")
    named = [str(outside / "good.safetensors"), str(outside / "broken.safetensors"),
             str(outside / "missing.safetensors"), "/etc/shadow", "/etc/nope.pth",
             str(roots / ".." / "outside" / "good.safetensors"), str(roots / "escape.safetensors")]
    with guarded_client(tmp_path, dataset_roots=(roots,)) as client:
        for field, spec_of in (
                ("space.pretrained", lambda path: {**SPEC, "space": {"pretrained": path}}),
                ("space.pretrained", lambda path: {**SPEC, "space": {"pretrained": [False, path]}}),
                ("space.pretrained", lambda path: {**SPEC, "space": {"pretrained": {"value": path}}}),
                ("dataset.source", lambda path: {**SPEC, "dataset": {"source": path}})):
            answers = set()
            for path in [*named, str(outside / "data")]:
                response = client.post("/jobs", headers=AUTH, json=spec_of(path))
                assert response.status_code == 422, (path, response.text)
                answers.add(response.text.replace(repr(path)[1:-1], "PATH"))
            assert len(answers) == 1, answers
            assert f"{field}='PATH' is outside the dataset roots" in answers.pop()
        assert client.get("/jobs", headers=AUTH).json()["total"] == 0


def test_jobs_over_http_read_only_under_the_dataset_roots(tmp_path: Path) -> None:
    """A token is not a key to the server's files: a path outside the roots, however written
    (`..`, a symlink) is refused without a word of what is there, or whether it exists."""
    roots = tmp_path / "datasets"
    (roots / "flowers" / "a").mkdir(parents=True)
    secrets_csv = tmp_path / "secrets.csv"
    secrets_csv.write_text("SECRET_API_KEY=hunter2,other\n")
    (roots / "escape").symlink_to(tmp_path)
    with guarded_client(tmp_path, dataset_roots=(roots,)) as client:
        for source in (str(secrets_csv), "/etc", "/proc/self", str(roots / ".." / "secrets.csv"),
                       str(roots / "escape" / "secrets.csv"), str(roots / "escape")):
            response = client.post("/jobs", headers=AUTH,
                                   json={**SPEC, "dataset": {"source": source}})
            assert response.status_code == 422, (source, response.text)
            assert "outside the dataset roots" in response.text
            assert "hunter2" not in response.text and "SECRET" not in response.text
        assert client.get("/jobs", headers=AUTH).json()["total"] == 0
        inside = client.post("/jobs", headers=AUTH,
                             json={**SPEC, "dataset": {"source": str(roots / "flowers")}})
        assert inside.status_code == 201, inside.text
    with guarded_client(tmp_path) as client:  # no roots: builtin datasets only
        response = client.post("/jobs", headers=AUTH,
                               json={**SPEC, "dataset": {"source": str(roots / "flowers")}})
        assert response.status_code == 422 and "AUTOML_DATASET_ROOTS" in response.text


def test_a_refusal_over_http_does_not_say_where_the_dataset_roots_are(tmp_path: Path) -> None:
    roots = (tmp_path / "operator-only-a", tmp_path / "operator-only-b")
    with guarded_client(tmp_path, dataset_roots=roots) as client:
        for spec in ({**SPEC, "dataset": {"source": "/etc"}},
                     {**SPEC, "space": {"pretrained": "/srv/w.safetensors"}}):
            response = client.post("/jobs", headers=AUTH, json=spec)
            assert response.status_code == 422, response.text
            assert "outside the dataset roots (AUTOML_DATASET_ROOTS)" in response.text
            assert "operator-only" not in response.text


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


def test_jobs_over_http_track_only_to_the_services_mlflow_server(tmp_path: Path) -> None:
    """Any other URI would have the runner write wherever the token holder names (a local
    store) or call whatever the runner can reach and report its answer (an internal server);
    the service's own (AUTOML_MLFLOW_URI) or none is taken."""
    others = ("sqlite:////etc/cron.d/x.db", "file:///root/.ssh", "/var/lib/x", "mlruns",
              "https://mlflow.example.com", "http://169.254.169.254/latest/meta-data",
              "http://mlflow:5000.evil.example", "databricks://profile")
    with guarded_client(tmp_path, mlflow_uri="http://mlflow:5000") as client:
        for uri in others:
            response = client.post("/jobs", headers=AUTH,
                                   json={**SPEC, "tracking": {"mlflow": uri}})
            assert response.status_code == 422, (uri, response.text)
            assert "tracking.mlflow" in response.text and "AUTOML_MLFLOW_URI" in response.text
        assert client.get("/jobs", headers=AUTH).json()["total"] == 0
        for uri in ("http://mlflow:5000", "http://mlflow:5000/", None):
            served = client.post("/jobs", headers=AUTH, json={**SPEC, "tracking": {"mlflow": uri}}
                                 if uri else SPEC)
            assert served.status_code == 201, served.text
    with guarded_client(tmp_path / "none") as client:  # no server of its own: none at all
        response = client.post("/jobs", headers=AUTH,
                               json={**SPEC, "tracking": {"mlflow": "https://mlflow.example.com"}})
        assert response.status_code == 422 and "AUTOML_MLFLOW_URI is not set" in response.text


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


def test_resume_queues_a_failed_or_cancelled_job_again(client: TestClient) -> None:
    job = client.post("/jobs", json=SPEC).json()
    refused = client.post(f"/jobs/{job['id']}/resume")
    assert refused.status_code == 409 and "only a failed or cancelled job" in refused.text
    client.post(f"/jobs/{job['id']}/cancel")
    resumed = client.post(f"/jobs/{job['id']}/resume")
    assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
    assert resumed.json()["cancel_requested"] is False
    assert client.post("/jobs/nope/resume").status_code == 404


def test_a_page_of_jobs_is_a_fixed_number_of_queries(client: TestClient, pg_url: str) -> None:
    """A study lookup for each job's dashboard link would make a page cost queries per job,
    and concurrent listings queue behind them."""
    from sqlalchemy import event

    from storage.db import engine_for

    for _ in range(12):
        client.post("/jobs", json=SPEC)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    engine = engine_for(pg_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        page = client.get("/jobs", params={"limit": 12}).json()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(page["jobs"]) == 12
    assert len(statements) <= 3, statements


@contextlib.contextmanager
def live_api(settings: Settings) -> Iterator[str]:
    import threading

    import uvicorn

    from tests.support import free_port, wait_for

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def raw_request(address: str, head: str, body: bytes = b"") -> str:
    import socket

    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        return sock.recv(65536).decode(errors="replace")


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


def test_serve_opens_one_optuna_storage_for_the_api_and_the_dashboard(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each storage is a trial cache holding every finished trial it read: two in `automl
    serve` would hold every study twice."""
    import optuna

    from automl.service.server import build
    from tests.support import free_port

    opened: list[object] = []
    real_init = optuna.storages.RDBStorage.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", counting_init)
    api, dashboard = build(Settings(home=tmp_path, database_url=pg_url), "127.0.0.1", free_port())
    dashboard.server_close()
    assert len(opened) == 1
    assert getattr(api.state.service.studies, "_backend", None) is opened[0]
