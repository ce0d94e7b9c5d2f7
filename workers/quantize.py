"""int8 ONNX: post-training static quantization of an exported classifier, judged on the test split.

onnxruntime's static quantization (QDQ, per-channel int8 weights on a 7-bit range, uint8
activations calibrated with min-max on training images) rather than torch's: its output runs on
the runtime the project already serves and measures latency with, and on x86 its integer kernels
are what makes int8 faster at batch 1. The weights' reduced range (`reduce_range`) is what keeps
the accuracy: on x86 without VNNI (AVX2, and AVX-512 before VNNI) onnxruntime multiplies uint8
activations by int8 weights with VPMADDUBSW, whose 16-bit sums of two products saturate with
full-range weights. Measured on the digits (docs/benchmarks.md, "Distillation and int8"),
full-range weights lost 2 to 9 points of test accuracy on three of four models where 7-bit ones
lost at most 0.7, at the same latency. QOperator instead of QDQ, entropy or percentile
calibration, per-tensor weights, symmetric or int8 activations, uint8 weights and leaving the
first conv and the classifier in float were measured too and did no better across those models.
int8 pays where convolutions dominate: about 3x on resnet18 at 32 px, 1.1 to 1.3x on the small
test students, whose few channels leave per-op overhead in charge.

Calibration uses training images only, so the test split stays an honest judge; the int8 file is
put in place only when it loses no more than `max_drop` of test accuracy against the float model
it came from, both measured here on the same images.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.data.index import DatasetError
from workers.data.sources import load_index
from workers.errors import UserError, first_line
from workers.model.costs import onnx_latency
from workers.model.target import LatencyTarget
from workers.predict import LoadedModel
from workers.train.augment import eval_transform
from workers.train.prepared import prepare_data

CALIBRATION_IMAGES = 256
MAX_DROP = 0.01  # of test accuracy: one point
BATCH = 32


class QuantizeError(UserError):
    """A model that could not be quantized, or whose int8 form lost too much; nothing written."""


@dataclass(frozen=True)
class Scored:
    accuracy: float  # top-1 on the test split
    latency_ms: float  # on the target
    size_bytes: int


@dataclass(frozen=True)
class Quantized:
    path: Path  # the int8 file (in place only when `kept`)
    fp32: Scored
    int8: Scored
    calibration_images: int
    test_images: int
    target: LatencyTarget
    max_drop: float

    @property
    def drop(self) -> float:
        return self.fp32.accuracy - self.int8.accuracy

    @property
    def kept(self) -> bool:
        return self.drop <= self.max_drop

    @property
    def speedup(self) -> float:
        return self.fp32.latency_ms / self.int8.latency_ms


def quantize_model(
    loaded: LoadedModel,
    fp32: Path,
    out: Path,
    target: LatencyTarget,
    calibration: int = CALIBRATION_IMAGES,
    max_drop: float = MAX_DROP,
) -> Quantized:
    """Quantize the exported `fp32` file of `loaded` into `out`; `out` is written only when the
    int8 model keeps test accuracy within `max_drop` of the float one (the result says either
    way, so a caller can report what was measured)."""
    check_max_drop(max_drop)
    images = _SplitImages(loaded)
    calibrating = images.take("train", calibration)
    test_images, test_labels = images.take("test"), images.labels("test")
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _quantize(fp32, partial, calibrating, loaded.config.backbone)
        side = loaded.preprocessing.img_size
        scored = [
            Scored(_accuracy(path, test_images, test_labels), onnx_latency(path, side, target),
                   path.stat().st_size)
            for path in (fp32, partial)
        ]
        result = Quantized(out, scored[0], scored[1], len(calibrating), len(test_labels),
                           target, max_drop)
        if result.kept:
            os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return result


def check_max_drop(max_drop: float) -> None:
    if not 0 <= max_drop < 1:
        raise QuantizeError(f"max_drop must be a fraction of accuracy in [0, 1), not {max_drop:g}; "
                            "e.g. 0.01 for one point")


class _SplitImages:
    """A split's images as the served graph takes them: uint8, resized and center-cropped."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.index = load_index(loaded.config.data)
        self.pixels = prepare_data(loaded.config, loaded.preprocessing, self.index).pixels
        self.crop = eval_transform(loaded.preprocessing.img_size)

    def rows(self, split: str) -> np.ndarray:
        rows = np.asarray(self.index.split_indices[split])
        if len(rows) == 0:
            raise DatasetError(f"the dataset has no {split} split to quantize with; give it one "
                               "(a split column or train/ and test/ folders)")
        return rows

    def take(self, split: str, limit: int | None = None) -> np.ndarray:
        rows = self.rows(split)
        if limit is not None and len(rows) > limit:  # a fixed sample: the same file every time
            rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
        return self.crop(torch.from_numpy(np.take(self.pixels, rows, axis=0))).numpy()

    def labels(self, split: str) -> np.ndarray:
        self.rows(split)  # the same refusal as `take`
        return self.index.split_labels(split)


def _quantize(fp32: Path, out: Path, calibrating: np.ndarray, backbone: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibrating, max(1, len(calibrating) // BATCH)))

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="automl-quantize-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        except Exception as error:  # the quantizer's many failures all mean "cannot do this one"
            raise QuantizeError(
                f"onnxruntime could not quantize {backbone!r}: {type(error).__name__}: "
                f"{first_line(error)}; "
                "export it without --int8"
            ) from error
    _carry_metadata(fp32, out, len(calibrating))


def _carry_metadata(fp32: Path, out: Path, calibration: int) -> None:
    """The float file's classes and preprocessing, plus how the int8 one was made."""
    import onnx

    source = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, {**source, "quantization": json.dumps({
        "format": "QDQ", "weights": "int8 per-channel, 7-bit range (reduce_range)",
        "activations": "uint8 min-max",
        "calibration_images": calibration, "calibration_split": "train"})})
    onnx.save(model, str(out))


def _accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = 0
    for start in range(0, len(images), 128):
        logits = session.run(["logits"], {"image": images[start:start + 128]})[0]
        correct += int((logits.argmax(axis=1) == labels[start:start + 128]).sum())
    return correct / max(1, len(labels))
