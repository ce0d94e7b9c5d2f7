"""`automl serve-model`: bad input is one line and exit 2; a model folder served for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from automl.cli import app
from serving.model import ServedModel
from tests.support import free_port, wait_for


@pytest.mark.parametrize("target", ["no-such-model", "EMPTY", "JUNK"])
def test_bad_targets_are_one_line_and_exit_2(tmp_path: Path, target: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.onnx").write_bytes(b"not onnx")
    given = {"EMPTY": str(tmp_path / "empty"), "JUNK": str(tmp_path / "junk")}.get(target, target)
    result = CliRunner().invoke(app, ["serve-model", given, "--repository", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "error:" in result.output
    assert "Traceback" not in result.output


def test_serve_model_serves_a_repository_model(tmp_path: Path, onnx_file: Path,
                                               model: ServedModel, images: list[Path]) -> None:
    version = tmp_path / "models" / "digits" / "1"
    version.mkdir(parents=True)
    shutil.copy(onnx_file, version / "model.onnx")
    (version.parent / "config.pbtxt").write_text(
        'max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n')
    port = free_port()
    env = {**os.environ, "AUTOML_HOME": str(tmp_path), "AUTOML_API_TOKEN": "t0ken",
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "automl.cli", "serve-model", "digits", "--port", str(port),
         "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").json()["ready"], 60, "serve-model")
        auth = {"Authorization": "Bearer t0ken"}
        response = httpx.post(f"{url}/predict", files={"file": images[-1].read_bytes()},
                              headers=auth)
        assert response.status_code == 200
        crop, _, _ = model.prepare(images[-1].read_bytes())
        _, label, probability = model.label(model.run(crop[None])["probabilities"][0])
        assert response.json()[0]["label"] == label
        assert response.json()[0]["probability"] == pytest.approx(probability, abs=1e-6)
        assert httpx.get(f"{url}/v2/models/digits", headers=auth).json()["versions"] == ["1"]
        assert httpx.post(f"{url}/predict", files={"file": b"x"}).status_code == 401
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "serving 'digits' version 1" in stderr and "batches of up to 8" in stderr
    assert "waiting up to 1 ms" in stderr
