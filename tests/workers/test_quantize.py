"""`automl export --int8`: an int8 ONNX file, calibrated on training images and judged against the
float model on the test split, written only when it keeps accuracy within the allowed drop."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime
import pytest
from typer.testing import CliRunner

from automl.cli import app
from tests.support import serve_onnx
from workers.config import TrialConfig
from workers.data.sources import load_index
from workers.train.loop import train

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3, "epochs": 1,
        "freeze_stages": 0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    best = train(TrialConfig.from_dict(TINY), tmp_path_factory.mktemp("trial")).best_checkpoint
    assert best is not None
    return best


def export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", *args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, " ".join(result.output.split())


def test_the_int8_model_is_smaller_faster_and_predicts_like_the_float_one(
    checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "served" / "digits.onnx"
    code, said = export("--checkpoint", str(checkpoint), "--out", str(out), "--int8",
                        "--max-drop", "0.5")
    assert code == 0, said
    int8 = out.with_name("digits.int8.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["digits.int8.onnx", "digits.onnx"]
    assert f"wrote {int8}: int8" in said and "calibrated on 256 training images" in said
    assert "fp32" in said and "int8" in said and "test accuracy" in said
    assert int8.stat().st_size < out.stat().st_size / 2

    meta = onnxruntime.InferenceSession(str(int8)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    made = json.loads(meta["quantization"])
    assert made["calibration_split"] == "train"
    assert "7-bit range" in made["weights"]  # full-range weights saturate AVX2's u8s8 kernels
    # what a serving stack does with the file alone agrees with the float model on most images
    images = list(load_index(TrialConfig.from_dict(TINY).data).paths[:40])
    agree = (serve_onnx(int8, images).argmax(1) == serve_onnx(out, images).argmax(1)).mean()
    assert agree >= 0.8, agree


def test_an_int8_model_losing_more_than_allowed_is_reported_and_not_written(
    checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model.onnx"
    code, said = export("--checkpoint", str(checkpoint), "--out", str(out), "--int8",
                        "--max-drop", "0")
    lost = float(said.split(" points of accuracy lost")[0].rsplit(" ", 1)[1])
    if lost > 0:  # the usual case for a one-epoch model at 32 px
        assert code == 1 and "more than --max-drop 0, so no int8 file was written" in said
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # the float one
    else:
        assert code == 0 and out.with_name("model.int8.onnx").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_a_max_drop_that_is_not_a_fraction_is_refused_in_one_line(
    checkpoint: Path, tmp_path: Path
) -> None:
    code, said = export("--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                        "--int8", "--max-drop", "1.5")
    assert code == 2 and "max_drop must be a fraction of accuracy in [0, 1), not 1.5" in said
    assert not any(tmp_path.iterdir())  # refused before the float export too
