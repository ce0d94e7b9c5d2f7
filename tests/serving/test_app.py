"""The model server over real HTTP (uvicorn in a thread, httpx): the KServe v2 routes against
onnxruntime run directly, /predict against `automl predict`, batching, the token, bad inputs,
feedback reaching the recorder, and the metrics."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serving.app import create_app
from serving.model import ServedModel
from serving.state import Server
from tests.serving.conftest import MemoryRecorder, live

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def recorder() -> MemoryRecorder:
    return MemoryRecorder()


@pytest.fixture(scope="module")
def served(model: ServedModel, recorder: MemoryRecorder) -> Iterator[tuple[str, Server]]:
    app = create_app(model, name="digits", version="3", recorder=recorder, token=TOKEN,
                     max_batch=16, max_wait_ms=20, max_body_bytes=1_000_000)
    with live(app) as url:
        yield url, app.state.server


@pytest.fixture
def client(served: tuple[str, Server]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], headers=AUTH, timeout=30) as c:
        yield c


def _metrics(client: httpx.Client) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {family.name: [(s.name, s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(response.text)}


def test_health_needs_no_token_and_the_rest_does(served: tuple[str, Server]) -> None:
    with httpx.Client(base_url=served[0]) as bare:
        assert bare.get("/v2/health/live").json() == {"live": True}
        assert bare.get("/v2/health/ready").json() == {"ready": True}
        for method, path in [("GET", "/v2/models/digits"), ("POST", "/predict"),
                             ("GET", "/metrics"), ("POST", "/feedback"),
                             ("POST", "/v2/models/digits/infer")]:
            response = bare.request(method, path)
            assert response.status_code == 401, path
            assert "bearer token" in response.text
        wrong = bare.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_v2_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/models/digits").json() == {
        "name": "digits", "versions": ["3"], "platform": "onnxruntime",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, 32, 32]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2").json() == {"name": "automl", "version": "0.1.0", "extensions": []}
    assert client.get("/v2/models/digits/versions/3").status_code == 200
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "no model named 'other'" in missing.json()["error"]
    assert client.get("/v2/models/digits/versions/9").status_code == 404


def test_v2_infer_equals_onnxruntime(client: httpx.Client, onnx_file: Path) -> None:
    import onnxruntime

    batch = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    response = client.post("/v2/models/digits/infer", json={
        "id": "req-1",
        "inputs": [{"name": "image", "shape": [3, 3, 32, 32], "datatype": "UINT8",
                    "data": batch.ravel().tolist()}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("digits", "3", "req-1")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    probabilities, logits = session.run(["probabilities", "logits"], {"image": batch})
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 10]
    assert outputs["probabilities"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(3, 10),
                               probabilities, atol=1e-6)
    np.testing.assert_allclose(np.array(outputs["logits"]["data"]).reshape(3, 10), logits,
                               atol=1e-5)
    only = client.post("/v2/models/digits/infer", json={
        "inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "UINT8",
                    "data": batch[:1].tolist()}], "outputs": [{"name": "logits"}]}).json()
    assert [o["name"] for o in only["outputs"]] == ["logits"] and len(only["id"]) == 32


@pytest.mark.parametrize(("change", "says"), [
    ({"datatype": "FP32"}, "datatype UINT8, got FP32"),
    ({"shape": [1, 3, 16, 16]}, "has shape [-1, 3, 32, 32]"),
    ({"shape": [1, 3, 32]}, "has shape"),
    ({"name": "pixels"}, "one input named 'image'"),
    ({"data": [1, 2, 3]}, "has 3 elements"),
    ({"data": [300] * 3072}, "outside UINT8's range"),
    ({"data": [0.5] * 3072}, "must be integers"),
    ({"shape": [17, 3, 32, 32], "data": [0] * 17 * 3072}, "over the server's max batch size"),
    ({"data": None}, "inputs.0.data"),
])
def test_v2_bad_tensors_are_400(client: httpx.Client, change: dict[str, object],
                                says: str) -> None:
    tensor = {"name": "image", "shape": [1, 3, 32, 32], "datatype": "UINT8", "data": [0] * 3072}
    response = client.post("/v2/models/digits/infer", json={"inputs": [{**tensor, **change}]})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"] and "\n" not in response.json()["error"]


def test_predict_equals_automl_predict(client: httpx.Client, images: list[Path],
                                       checkpoint: Path, recorder: MemoryRecorder) -> None:
    from workers.predict import load_checkpoint, predict_images

    expected = predict_images(load_checkpoint(checkpoint), images)
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in images]
    response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    got = response.json()
    assert len(got) == len(images)
    for answer, want in zip(got, expected, strict=True):
        assert answer["label"] == want.label
        assert answer["probability"] == pytest.approx(want.probability, abs=1e-4)
    # recorded after answering, off the request path
    ids = [a["prediction_id"] for a in got]
    deadline = time.monotonic() + 10
    while not all(i in recorder.rows for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    row = recorder.rows[ids[0]]
    assert (row.model, row.version, row.label) == ("digits", "3", int(got[0]["label"]))
    assert row.confidence == pytest.approx(got[0]["probability"])
    assert set(row.signature) == {"width", "height", "brightness", "contrast", "saturation"}
    assert row.signature["width"] == Image.open(images[0]).size[0]


def test_feedback_reaches_the_recorder(client: httpx.Client, images: list[Path],
                                       recorder: MemoryRecorder) -> None:
    answer = client.post("/predict", files={"file": images[0].read_bytes()}).json()[0]
    # sent at once, on another connection: the row was queued before the answer left, and the
    # server waits for it to reach the recorder
    ok = httpx.post(f"{client.base_url}/feedback", headers=AUTH,
                    json={"prediction_id": answer["prediction_id"], "label": "7"})
    assert ok.status_code == 200, ok.text
    assert recorder.labels[answer["prediction_id"]] == 7
    unknown = client.post("/feedback", json={"prediction_id": "nope", "label": "7"})
    assert unknown.status_code == 404 and "no prediction 'nope'" in unknown.json()["detail"]
    wrong = client.post("/feedback", json={"prediction_id": answer["prediction_id"],
                                           "label": "cat"})
    assert wrong.status_code == 422 and "no class named 'cat'" in wrong.json()["detail"]
    missing = client.post("/feedback", json={"label": "7"})
    assert missing.status_code == 422 and "prediction_id" in missing.json()["detail"]


def test_bad_predict_requests_are_4xx_and_the_server_keeps_serving(
        client: httpx.Client, images: list[Path]) -> None:
    png = io.BytesIO()
    Image.new("RGB", (20, 30), "red").save(png, "PNG")
    cases = [
        (client.post("/predict"), 400, "no image"),
        (client.post("/predict", data={"other": "x"}), 400, "no image"),
        (client.post("/predict", json={"file": "x"}), 400, "no image"),
        (client.post("/predict", files={"file": b"not an image"}), 400, "cannot decode"),
        (client.post("/predict", files=[("file", png.getvalue()), ("file", b"GIF89a junk")]),
         400, "file 2 of 2: cannot decode"),
        (client.post("/predict", files={"file": b"\0" * 1_100_000}), 413, "over 1,000,000 bytes"),
        (client.post("/predict", content=b"--x\r\nbroken",
                     headers={"Content-Type": "multipart/form-data; boundary=x"}), 400, ""),
        (client.post("/predict", files=[("file", png.getvalue())] * 65), 400, "files"),
    ]
    for response, code, says in cases:
        assert response.status_code == code, response.text
        assert says in response.text and "Traceback" not in response.text
    good = client.post("/predict", files={"file": images[0].read_bytes()})
    assert good.status_code == 200 and good.json()[0]["label"] in [str(d) for d in range(10)]


def test_concurrent_requests_form_batches(client: httpx.Client, served: tuple[str, Server],
                                          images: list[Path]) -> None:
    before = next(iter(served[1].metrics.batch_size.collect()))
    data = images[3].read_bytes()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=served[0], headers=AUTH, timeout=30) as c:
            responses = await asyncio.gather(
                *(c.post("/predict", files={"file": data}) for _ in range(32)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 32
    families = _metrics(client)
    buckets = {s[1]["le"]: s[2] for s in families["automl_batch_size"]
               if s[0].endswith("_bucket")}
    old = {s.labels["le"]: s.value for s in before.samples if s.name.endswith("_bucket")}
    assert buckets["+Inf"] - buckets["1.0"] > old["+Inf"] - old["1.0"]  # batches over 1 row


def test_metrics_count_requests_and_alerts(client: httpx.Client,
                                           served: tuple[str, Server]) -> None:
    client.get("/v2/models/digits")
    client.get("/v2/models/nope")
    served[1].set_alert("drift", True)
    families = _metrics(client)
    requests = {(s[1]["route"], s[1]["status"]): s[2]
                for s in families["automl_requests"] if s[0].endswith("_total")}
    assert requests[("/v2/models/{name}", "200")] >= 1
    assert requests[("/v2/models/{name}", "404")] >= 1
    errors = {(s[1]["route"], s[1]["kind"]) for s in families["automl_errors"]}
    assert ("/v2/models/{name}", "client") in errors
    assert ("automl_monitor_alert", {"model": "digits", "check": "drift"}, 1.0) in \
        families["automl_monitor_alert"]
    # the names docker/prometheus/alerts.yml's rules use (tests/test_deploy.py lists them)
    assert {"automl_requests", "automl_request_seconds", "automl_batch_size",
            "automl_predictions", "automl_monitor_alert", "automl_queue_depth",
            "automl_errors"} <= set(families)
    served[1].set_alert("drift", False)
    assert ("automl_monitor_alert", {"model": "digits", "check": "drift"}, 0.0) in \
        _metrics(client)["automl_monitor_alert"]


def test_without_a_recorder_feedback_is_off(model: ServedModel, images: list[Path]) -> None:
    app = create_app(model, name="plain", max_batch=4, max_wait_ms=1)
    with live(app) as url, httpx.Client(base_url=url) as c:
        assert c.post("/predict", files={"file": images[0].read_bytes()}).status_code == 200
        off = c.post("/feedback", json={"prediction_id": "x", "label": "1"})
        assert off.status_code == 404 and "monitoring is off" in off.json()["detail"]


def test_an_unexpected_error_is_a_500_with_an_incident_id(
        model: ServedModel, images: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(model, name="broken")
    state: Server = app.state.server

    def broken(rows: np.ndarray) -> dict[str, np.ndarray]:
        raise RuntimeError("/secret/path exploded")

    state.batcher.run = broken
    with live(app) as url, httpx.Client(base_url=url) as c:
        response = c.post("/predict", files={"file": images[0].read_bytes()})
        assert response.status_code == 500
        assert "internal error" in response.json()["detail"]
        assert "secret" not in response.text
        assert c.post("/v2/health/live").status_code == 405
        assert c.get("/v2/health/live").status_code == 200
    assert "/secret/path exploded" in caplog.text


def test_stopping_hands_over_what_waits_and_closes_the_recorder(
        model: ServedModel, images: list[Path]) -> None:
    recorder = MemoryRecorder()
    app = create_app(model, name="closing", recorder=recorder)
    with live(app) as url, httpx.Client(base_url=url) as c:
        answer = c.post("/predict", files={"file": images[0].read_bytes()}).json()[0]
    assert recorder.closed and answer["prediction_id"] in recorder.rows
    assert not app.state.server.serving


def test_not_ready_is_a_503(model: ServedModel) -> None:
    app = create_app(model, name="starting")
    with live(app) as url, httpx.Client(base_url=url) as c:
        app.state.server.ready = False  # as while it stops
        assert c.get("/v2/health/ready").status_code == 503
        not_ready = c.get("/v2/models/starting/ready")
        assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
        assert c.get("/v2/health/live").status_code == 200
