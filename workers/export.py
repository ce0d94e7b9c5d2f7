"""Exporting a checkpoint for serving without PyTorch or this project: ONNX.

The exported graph takes what an image decoder gives (uint8 RGB, NCHW, already resized and
center-cropped as the metadata says) and returns class probabilities and logits: normalization
is inside the graph, so a serving stack cannot get the mean/std wrong. Classes and preprocessing
ride along as ONNX metadata. The file is checked against PyTorch with onnxruntime before it is
put in place, so a mistranslated operator fails the export instead of the predictions.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workers.errors import UserError, first_line
from workers.model.checkpoint import read_info
from workers.model.costs import onnx_latency, quiet_exporters
from workers.model.preprocessing import stored_size
from workers.model.target import LatencyTarget
from workers.predict import LoadedModel, load_checkpoint
from workers.train.augment import normalize

LEGACY_OPSET = 18  # for the TorchScript-based fallback exporter
TOLERANCE = 1e-3  # max |probability difference| between onnxruntime and PyTorch
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the exporter colours its messages


class ExportError(UserError):
    """An export that could not be made or did not check out; nothing was written."""


@dataclass(frozen=True)
class Exported:
    path: Path
    opset: int
    img_size: int
    classes: list[str]
    max_difference: float  # onnxruntime vs PyTorch, on probabilities
    latency_ms: float  # of the written file, on the target the job measured its trials for
    target: LatencyTarget


class _Serving(torch.nn.Module):
    """uint8 images in, (probabilities, logits) out: the evaluation pipeline after the crop.
    The probabilities are at the model's temperature when it has one (as `automl predict`)."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model
        self.mean, self.std = loaded.preprocessing.mean, loaded.preprocessing.std
        self.temperature = loaded.temperature or 1.0

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(normalize(image, self.mean, self.std)).float()
        return (logits / self.temperature).softmax(dim=1), logits


def export_onnx(checkpoint: Path, out: Path, opset: int | None = None) -> Exported:
    """Write `out` (.onnx) from a checkpoint directory, checked against PyTorch first; its
    latency is measured on the deployment target the job measured its trials for (the default
    target for a checkpoint of a job that set none)."""
    target = read_info(checkpoint)["metrics"].get("latency_target")
    return export_model(load_checkpoint(checkpoint, torch.device("cpu")), out, opset,
                        LatencyTarget(**target) if target else LatencyTarget())


def export_model(loaded: LoadedModel, out: Path, opset: int | None = None,
                 target: LatencyTarget | None = None) -> Exported:
    """`export_onnx` for a model already loaded (tests pass models no checkpoint holds)."""
    serving = _Serving(loaded).eval()
    size = loaded.preprocessing.img_size
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")  # put in place once checked
    backbone = loaded.config.backbone
    try:
        _export(serving, size, partial, opset, backbone)
        used = _add_metadata(partial, loaded)
        difference = _check(partial, serving, size)
        if difference > TOLERANCE:
            raise ExportError(
                f"the ONNX model's probabilities differ from PyTorch's by up to {difference:.3g} "
                f"(allowed {TOLERANCE:g}); try another --opset, or report the backbone "
                f"{backbone!r}"
            )
        target = target or LatencyTarget()
        latency = onnx_latency(partial, size, target)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return Exported(out, used, size, loaded.classes, difference, latency, target)


def _export(serving: _Serving, size: int, path: Path, opset: int | None, backbone: str) -> None:
    """torch.export-based exporter first (PyTorch's default); where it cannot capture a model
    (timm's BEiT reshapes attention in a way its decompositions reject) the TorchScript-based one,
    which traces a forward pass instead. A batch of 2, since torch.export fixes a size-1 dim.

    Only the exporters' own failures become an `ExportError` (they raise many kinds, and all
    mean "this model cannot be translated" to a user); anything failing around them is a bug
    here and keeps its traceback."""
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    inputs, outputs = ["image"], ["probabilities", "logits"]
    with quiet_exporters():
        try:
            program = torch.onnx.export(
                serving, (example,), dynamo=True, verbose=False, opset_version=opset,
                input_names=inputs, output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
            assert program is not None  # None only when the legacy exporter writes a file
            program.save(str(path), external_data=False)
            return
        except Exception as error:
            first = error
        try:
            torch.onnx.export(
                serving, (example,), str(path), dynamo=False, opset_version=opset or LEGACY_OPSET,
                input_names=inputs, output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in inputs + outputs},
            )
        except Exception:
            why = first_line(_ANSI.sub("", str(first)))
            raise ExportError(
                f"could not export {backbone!r} to ONNX: {type(first).__name__}: "
                f"{why}; try another --opset, or report the backbone"
            ) from first


def _add_metadata(path: Path, loaded: LoadedModel) -> int:
    """Adds classes and preprocessing; returns the file's ONNX opset."""
    import onnx

    model = onnx.load(str(path))
    prep = loaded.preprocessing
    values = {
        "classes": json.dumps(loaded.classes),
        "preprocessing": json.dumps({**prep.to_dict(),
                                     "resize": stored_size(prep.img_size, prep.crop_pct)}),
        "backbone": loaded.config.backbone,
        "temperature": json.dumps(loaded.temperature or 1.0),
        "input": (f"uint8 RGB NCHW [N, 3, {prep.img_size}, {prep.img_size}]: shorter side "
                  f"resized to preprocessing.resize ({prep.interpolation}), then center-cropped; "
                  "normalization is in the graph"),
    }
    onnx.helper.set_model_props(model, values)
    onnx.save(model, str(path))
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _check(path: Path, serving: _Serving, size: int) -> float:
    """Largest probability difference on a fresh batch of another size (the batch is dynamic)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        expected = serving(images)[0].numpy()
    got = session.run(["probabilities"], {"image": images.numpy()})[0]
    return float(np.abs(got - expected).max())
