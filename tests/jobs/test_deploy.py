"""`automl deploy` on a real published job: the Triton model repository it writes (checked with
Triton's own config schema), the monitoring reference, and the MLflow Model Registry version
(served by `mlflow models serve` over HTTP, loaded by `mlflow.pyfunc`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from automl.cli import app
from automl.jobs.deploy import _deploy_folder, build_reference
from automl.jobs.driver import run_job
from automl.search.spec import parse_spec
from automl.settings import Settings
from serving import repository
from serving.signature import FEATURES
from tests.support import DIGITS_JOB
from workers.data.digits import DIGITS_SIZE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
MONITOR = {"psi": 0.3, "accuracy_drop": 0.05, "min_predictions": 50}


@dataclass
class Job:
    job_id: str
    settings: Settings
    flags: list[str]  # --storage, --artifacts
    mlflow_uri: str
    tmp: Path

    def deploy(self, *args: str) -> Any:
        return CliRunner().invoke(app, ["deploy", *args, *self.flags])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    tmp = tmp_path_factory.mktemp("deploy")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = parse_spec({**DIGITS_JOB, "budget": {"n_trials": 1, "max_epochs": 1},
                       "max_concurrent_trials": 1, "strategy": {"seed": 0, "warm_start": False,
                                                                "pruner": "none"},
                       "tracking": {"mlflow": uri, "experiment": "digits"},
                       "monitor": MONITOR})
    settings = Settings(home=tmp / "automl-data")
    job_id = "digits-deploy"
    outcome = run_job(spec, job_id, settings)
    assert outcome.state == "succeeded", outcome.error
    flags = ["--storage", settings.storage_url, "--artifacts", settings.artifacts_path]
    return Job(job_id, settings, flags, uri, tmp)


def test_two_deploys_make_versions_1_and_2_with_a_triton_config(job: Job) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = job.tmp / "repo"
    first = job.deploy(job.job_id, "--repository", str(repo))
    assert first.exit_code == 0, first.output
    assert "exporting" in first.output  # a best publication has no ONNX file
    assert "tritonserver --model-repository" in first.output
    assert f"registered models:/{job.job_id}/1" in first.output
    second = job.deploy(job.job_id, "--repository", str(repo))
    assert second.exit_code == 0, second.output
    assert f"registered models:/{job.job_id}/2" in second.output
    model_dir = repo / job.job_id
    assert repository.versions(model_dir) == [1, 2]
    assert repository.version_dir(model_dir) == model_dir / "2"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", repository.CONFIG]
    files = {repository.MODEL, repository.META, repository.REFERENCE, repository.CARD}
    assert {p.name for p in (model_dir / "2").iterdir()} == files

    config = text_format.Parse((model_dir / repository.CONFIG).read_text(),
                               model_config_pb2.ModelConfig())
    assert config.name == job.job_id
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert config.version_policy.latest.num_versions == 1
    import onnx

    graph = onnx.load(str(model_dir / "2" / repository.MODEL)).graph
    types = {onnx.TensorProto.UINT8: model_config_pb2.TYPE_UINT8,
             onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
    for declared, tensors in ((config.input, graph.input), (config.output, graph.output)):
        assert [t.name for t in declared] == [t.name for t in tensors]
        for mine, theirs in zip(declared, tensors, strict=True):
            shape = [d.dim_value if d.HasField("dim_value") else -1
                     for d in theirs.type.tensor_type.shape.dim]
            assert list(mine.dims) == shape[1:]  # Triton's: no batch dim
            assert mine.data_type == types[theirs.type.tensor_type.elem_type]
    assert [t.name for t in config.input] == ["image"]
    assert list(config.input[0].dims) == [3, 32, 32]
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert [t.name for t in config.output] == ["probabilities", "logits"]
    assert list(config.output[0].dims) == [10]

    meta = json.loads((model_dir / "2" / repository.META).read_text())
    assert meta["job"] == job.job_id and meta["source"] == "best" and meta["int8"] is False
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["preprocessing"]["img_size"] == 32 and "resize" in meta["preprocessing"]
    assert meta["monitor"] == MONITOR
    assert meta["test_metrics"]["test_accuracy"] > 0
    assert {"trial", "temperature", "deployed_at"} <= set(meta)


def test_reference_json_has_the_test_distributions_and_the_training_signature(job: Job) -> None:
    repo = job.tmp / "repo-reference"
    assert job.deploy(job.job_id, "--repository", str(repo), "--name", "ref").exit_code == 0
    version = repository.version_dir(repo / "ref")
    assert version is not None
    reference = json.loads((version / repository.REFERENCE).read_text())
    assert set(reference) == {"classes", "test_metrics", "test_images", "class_distribution",
                              "confidence", "signature"}
    assert reference["classes"] == [str(i) for i in range(10)]
    assert reference["test_images"] > 100  # digits' test split
    for key in ("test_true", "test_predicted"):
        fractions = reference["class_distribution"][key]
        assert len(fractions) == 10 and sum(fractions) == pytest.approx(1)
    confidence = reference["confidence"]
    assert confidence["edges"] == pytest.approx(np.linspace(0, 1, 16).tolist())
    assert len(confidence["test"]) == 15 and sum(confidence["test"]) == pytest.approx(1)
    assert set(reference["signature"]) == set(FEATURES)
    for feature in FEATURES:
        bins = reference["signature"][feature]
        assert len(bins["train"]) == len(bins["edges"]) + 1 <= 10
        assert bins["edges"] == sorted(bins["edges"])
        assert sum(bins["train"]) == pytest.approx(1)
    # the digits are all one size: one cut point, every image at or below it
    side = float(DIGITS_SIZE)
    assert reference["signature"]["width"] == {"edges": [side], "train": [1.0, 0.0]}
    brightness = reference["signature"]["brightness"]
    assert len(brightness["edges"]) == 9  # deciles of a continuous feature
    assert all(0.05 < f < 0.15 for f in brightness["train"])


def test_bad_input_is_one_line_and_writes_nothing(job: Job) -> None:
    repo = job.tmp / "repo-bad"
    cases = {
        ("no-such-job",): "unknown job",
        (job.job_id, "--deployable"): "no deployable model",
        (job.job_id, "--name", "../escape"): "not a model name",
        (job.job_id, "--name", "a b"): "not a model name",
    }
    for args, message in cases.items():
        result = job.deploy(*args, "--repository", str(repo))
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert not repo.exists(), args
    blocker = job.tmp / "a-file"
    blocker.write_text("")
    for under in (blocker, blocker / "models"):
        result = job.deploy(job.job_id, "--repository", str(under))
        assert result.exit_code == 2 and "--repository" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_a_registry_failure_leaves_no_version(job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    """All or nothing: the version is renamed into place only after it is registered."""
    from mlflow.exceptions import MlflowException

    import automl.tune.tracking.registry as registry

    def broken(*args: Any) -> int:
        raise MlflowException("the store went away")

    repo = job.tmp / "repo-fail"
    assert job.deploy(job.job_id, "--repository", str(repo), "--name", "m").exit_code == 0
    monkeypatch.setattr(registry, "_register", broken)
    result = job.deploy(job.job_id, "--repository", str(repo), "--name", "m")
    assert result.exit_code == 2 and "cannot register m" in result.output, result.output
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", repository.CONFIG]
    result = job.deploy(job.job_id, "--repository", str(repo / "more" / "models"), "--name",
                        "new")
    assert result.exit_code == 2
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no folder made for it is left


def test_a_deployable_int8_file_is_preferred_and_said(job: Job, tmp_path: Path) -> None:
    """A deployable publication holds model.onnx and, when int8 passed its checks,
    model.int8.onnx: deploy takes the int8 one (here a copy of the float file, as named)."""
    from automl.service.service import JobService

    folder = JobService(job.settings).pull(job.job_id, tmp_path / "pulled")
    from workers.export import export_onnx

    export_onnx(folder, folder / "model.onnx")
    shutil.copyfile(folder / "model.onnx", folder / "model.int8.onnx")
    said: list[str] = []
    done = _deploy_folder(job.settings, folder, job.job_id, {}, "int8", tmp_path / "repo",
                          "deployable", said.append)
    assert done.int8 and done.source == "deployable" and done.registered is None
    assert any("int8" in line and "passed" in line for line in said)
    meta = json.loads((done.folder / repository.META).read_text())
    assert meta["int8"] is True and meta["source"] == "deployable" and meta["monitor"] is None


def test_an_unreadable_dataset_leaves_the_signature_out_with_a_warning(
        job: Job, tmp_path: Path) -> None:
    from automl.service.service import JobService

    folder = JobService(job.settings).pull(job.job_id, tmp_path / "pulled")
    meta_file = folder / "automl.json"
    meta = json.loads(meta_file.read_text())
    meta["trial_config"]["data"]["source"] = str(tmp_path / "gone")
    meta_file.write_text(json.dumps(meta))
    info = {"classes": meta["classes"], "test_metrics": meta["test_metrics"],
            "preprocessing": {**meta["preprocessing"], "resize": 36}}
    warnings: list[str] = []
    reference = build_reference(folder, info, warnings)
    assert "signature" not in reference and "confidence" in reference
    assert len(warnings) == 1 and "no input signature" in warnings[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_registered_version_serves_with_mlflow_as_onnxruntime_does(job: Job) -> None:
    import mlflow
    import onnxruntime

    repo = job.tmp / "repo-mlflow"
    result = job.deploy(job.job_id, "--repository", str(repo), "--name", "served")
    assert result.exit_code == 0, result.output
    registered = next(w for w in result.output.split() if w.startswith("models:/served/"))
    version = repository.version_dir(repo / "served")
    assert version is not None
    session = onnxruntime.InferenceSession(str(version / repository.MODEL),
                                           providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    expected = session.run(["probabilities"], {"image": images})[0]

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(job.mlflow_uri)
    mlflow.set_registry_uri(job.mlflow_uri)
    try:
        loaded = mlflow.pyfunc.load_model(registered)
        got = loaded.predict(images)
        np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=job.mlflow_uri, registry_uri=job.mlflow_uri)
    model_version = client.get_model_version("served", registered.rsplit("/", 1)[1])
    assert model_version.tags["job"] == job.job_id and model_version.tags["source"] == "best"
    assert job.job_id in (model_version.description or "")
    run_id = model_version.run_id
    assert run_id is not None
    run = client.get_run(run_id)
    assert run.data.tags["automl.deploy.job"] == job.job_id
    assert "test_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"README.md", "evaluation.json"} <= artifacts

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": job.mlflow_uri,
           "MLFLOW_REGISTRY_URI": job.mlflow_uri,  # and its uvicorn, which it runs by name:
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [MLFLOW, "models", "serve", "-m", registered, "--env-manager", "local", "--port",
         str(port), "--host", "127.0.0.1", "--workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=job.tmp)
    try:
        body = json.dumps({"inputs": images.tolist()}).encode()
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and server.poll() is None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        if answer is None:
            server.terminate()
            output, _ = server.communicate(timeout=30)
            pytest.fail(f"mlflow models serve did not answer: {output.decode()[-3000:]}")
        served = np.asarray(answer["predictions"]["probabilities"])
        np.testing.assert_allclose(served, expected, atol=1e-5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
