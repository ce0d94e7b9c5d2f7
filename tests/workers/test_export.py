"""`automl export`: an ONNX file that serves the same predictions without PyTorch or automl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import torch
from typer.testing import CliRunner

from automl.cli import app
from tests.support import serve_onnx
from workers.config import TrialConfig
from workers.data.sources import load_index
from workers.export import TOLERANCE, ExportError, _check, _export, _Serving, export_model
from workers.model.preprocessing import Preprocessing
from workers.predict import LoadedModel, load_checkpoint, predict_images
from workers.train.loop import train

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3, "epochs": 1,
        "freeze_stages": 2}


def test_the_exported_model_predicts_what_the_checkpoint_predicts(tmp_path: Path) -> None:
    config = TrialConfig.from_dict(TINY)
    checkpoint = train(config, tmp_path / "trial").best_checkpoint
    assert checkpoint is not None
    out = tmp_path / "served" / "digits.onnx"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output and "onnxruntime matches PyTorch" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["digits.onnx"]  # no partial file left

    images = list(load_index(config.data).paths[:5])  # a batch size the export never saw
    expected = predict_images(load_checkpoint(checkpoint, torch.device("cpu")), images)
    got = serve_onnx(out, images)
    meta = onnxruntime.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"])
    assert classes == [str(d) for d in range(10)] and meta["backbone"] == "test_resnet"
    assert [classes[i] for i in got.argmax(axis=1)] == [p.label for p in expected]
    want = np.array([[p.probabilities[c] for c in classes] for p in expected])
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_refuses_what_it_cannot_do_and_leaves_nothing(tmp_path: Path) -> None:
    config = TrialConfig.from_dict(TINY)
    checkpoint = train(config, tmp_path / "trial").best_checkpoint
    assert checkpoint is not None

    def refused(*args: str) -> str:
        result = CliRunner().invoke(app, ["export", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    assert "is a directory; give a file name" in refused(
        "--checkpoint", str(checkpoint), "--out", str(tmp_path))
    (checkpoint / "model.safetensors").write_bytes(b"\xff" * 64)
    out = tmp_path / "out" / "model.onnx"
    assert "model.safetensors is damaged" in refused("--checkpoint", str(checkpoint), "--out", str(out))
    nowhere = str(tmp_path / "nowhere")
    assert "is not a checkpoint directory" in refused("--checkpoint", nowhere, "--out", str(out))
    assert not out.exists() and not any(out.parent.glob(".*partial"))


def test_a_backbone_torch_export_cannot_capture_is_exported_by_tracing(tmp_path: Path) -> None:
    # timm's BEiT (in the default space) fails torch.export's decompositions in torch 2.14;
    # a one-block BEiT fails the same way, and the TorchScript-based exporter takes over
    beit = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=3, depth=1,
                             embed_dim=32, num_heads=2, img_size=32, patch_size=8)
    prep = Preprocessing(img_size=32, crop_pct=0.9, interpolation="bicubic",
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loaded = LoadedModel(beit.eval(), TrialConfig.from_dict(TINY), ["a", "b", "c"], prep,
                         torch.device("cpu"))
    serving = _Serving(loaded).eval()
    _export(serving, 32, tmp_path / "beit.onnx", None, "beit")
    assert _check(tmp_path / "beit.onnx", serving, 32) < TOLERANCE


class _SingularValues(torch.nn.Module):
    """Uses torch.linalg.svdvals, which neither ONNX exporter can translate (torch 2.14)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = x.flatten(1)[:, :16].reshape(-1, 4, 4)
        return self.head(torch.linalg.svdvals(square))  # type: ignore[no-any-return]


def test_a_model_no_exporter_can_translate_is_one_clear_error_and_no_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    prep = Preprocessing(img_size=8, crop_pct=1.0, interpolation="bicubic",
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loaded = LoadedModel(_SingularValues().eval(), TrialConfig.from_dict(TINY), ["a", "b", "c"],
                         prep, torch.device("cpu"))
    out = tmp_path / "svd.onnx"
    with pytest.raises(ExportError) as refused:
        export_model(loaded, out)
    message = str(refused.value)
    assert message.startswith("could not export 'test_resnet' to ONNX: ") and "\n" not in message
    assert "\x1b[" not in message and "try another --opset, or report the backbone" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .partial
    printed = capfd.readouterr()
    assert "graph(" not in printed.out + printed.err  # the TorchScript exporter's graph dump


def test_a_bug_after_the_exporter_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the exporter failing to translate a model is the user's problem: a failure in our own
    steps around it (here: measuring the file's latency) is a bug, and must not be reworded into
    "could not export ..., report the backbone"."""
    import workers.export

    def broken(*args: object) -> float:
        raise RuntimeError("a bug in the latency measurement")

    monkeypatch.setattr(workers.export, "onnx_latency", broken)
    prep = Preprocessing(img_size=8, crop_pct=1.0, interpolation="bicubic",
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    loaded = LoadedModel(model.eval(), TrialConfig.from_dict(TINY), ["a", "b", "c"], prep,
                         torch.device("cpu"))
    with pytest.raises(RuntimeError, match="a bug in the latency measurement"):
        export_model(loaded, tmp_path / "linear.onnx")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .partial
