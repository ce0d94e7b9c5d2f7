"""The jobs routes (automl/service/routes.py): submit, list, inspect, cancel, resume, download;
what a job submitted over HTTP may read and where it may track."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from automl.service.api import create_app
from automl.settings import Settings
from tests.service.conftest import AUTH, SPEC, guarded_client
from tests.support import DIGITS_JOB, backbone_weights, count_spec_work


def test_submit_then_inspect(client: TestClient, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # what the routes write
    created = client.post("/jobs", json=SPEC)
    assert created.status_code == 201
    job = created.json()
    assert job["id"].startswith("api-") and job["state"] == "queued"
    assert job["trials"] == {"running": 0, "complete": 0, "pruned": 0, "failed": 0, "budget": 2,
                             "paused": 0}
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
    deployable = client.get(f"/jobs/{job['id']}/deployable/checkpoint")
    assert deployable.status_code == 409 and "has not started" in deployable.json()["detail"]
    assert not list((tmp_path / "tmp").iterdir())  # a refused archive leaves no folder behind
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


def test_a_relative_dataset_path_is_refused_over_http(client: TestClient) -> None:
    body = {**SPEC, "dataset": {"source": "data/flowers"}}
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert "relative path; give the absolute path" in response.json()["detail"]
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.parametrize(
    "route", ["GET /jobs/nope", "GET /jobs/nope/trials", "POST /jobs/nope/cancel",
              "GET /jobs/nope/best", "GET /jobs/nope/best/checkpoint",
              "GET /jobs/nope/deployable/checkpoint"],
)
def test_unknown_job_ids_are_404(client: TestClient, route: str) -> None:
    method, path = route.split()
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.json()["detail"].startswith("unknown job id 'nope'")


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
