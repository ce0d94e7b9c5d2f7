"""A published model in onnxruntime: its session, its metadata, and its input pipeline.

The ONNX file is `workers.export`'s: uint8 RGB NCHW in (already resized and center-cropped),
probabilities (at the model's temperature) and logits out; classes and preprocessing ride along
as metadata. An image is decoded exactly as training and `automl predict` decode it (the trial
engine's torch-free decoder: shorter side to the stored size, center square), then the center
`img_size` square is cut as torchvision's CenterCrop cuts it.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serving.errors import ClientError, ModelError
from workers.data.images import DECODE_ERRORS, INTERPOLATIONS, decode, decode_error
from workers.data.index import DatasetError

PROBABILITIES = "probabilities"
REQUIRED = ("classes", "preprocessing")


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as the KServe v2 metadata names it; -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: list[int]


# onnxruntime's type names -> the KServe v2 / Triton datatypes
DATATYPES = {"tensor(uint8)": "UINT8", "tensor(float)": "FP32", "tensor(float16)": "FP16",
             "tensor(double)": "FP64", "tensor(int64)": "INT64", "tensor(int32)": "INT32",
             "tensor(int8)": "INT8", "tensor(bool)": "BOOL"}
NUMPY = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16, "FP64": np.float64,
         "INT64": np.int64, "INT32": np.int32, "INT8": np.int8, "BOOL": np.bool_}


class ServedModel:
    """One ONNX model, ready to run. `threads`: onnxruntime's intra-op threads (None: the CPU
    count this process may use)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        if not path.is_file():
            raise ModelError(f"no model file at {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or _cpus()
        options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own (pybind) types for a bad file
            raise ModelError(f"{path} is not an ONNX model onnxruntime can load "
                             f"({type(error).__name__})") from error
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in REQUIRED if key not in meta]
        if missing:
            raise ModelError(f"{path} has no {' and '.join(missing)} metadata: export it with "
                             "`automl export` (or `automl deploy`)")
        try:
            self.classes: list[str] = [str(c) for c in json.loads(meta["classes"])]
            self.preprocessing: dict[str, Any] = dict(json.loads(meta["preprocessing"]))
            self.img_size = int(self.preprocessing["img_size"])
            self.resize = int(self.preprocessing.get("resize", self.img_size))
            self.interpolation = str(self.preprocessing.get("interpolation", "bicubic"))
            self.temperature = float(json.loads(meta.get("temperature", "1.0")))
        except (ValueError, KeyError, TypeError) as error:
            raise ModelError(f"{path} has unreadable automl metadata "
                             f"({type(error).__name__}: {error})") from error
        if self.interpolation not in INTERPOLATIONS or self.resize < self.img_size:
            raise ModelError(f"{path}'s preprocessing metadata is not one this server knows")
        self.backbone = meta.get("backbone", "")
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]
        if len(self.inputs) != 1 or PROBABILITIES not in {o.name for o in self.outputs}:
            raise ModelError(f"{path} is not an automl export (one image input, "
                             f"'{PROBABILITIES}' output)")
        self.input = self.inputs[0]
        self.output_names = [o.name for o in self.outputs]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a (N, 3, img_size, img_size) uint8 batch."""
        results = self.session.run(self.output_names, {self.input.name: batch})
        return dict(zip(self.output_names, results, strict=True))

    def prepare(self, data: bytes) -> tuple[np.ndarray, int, int]:
        """An encoded image -> (the model's uint8 (3, S, S) input, width, height as sent). An
        image PIL cannot read, or one over the pixel bound (AUTOML_MAX_IMAGE_PIXELS), is the
        client's error."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
            square = decode(io.BytesIO(data), self.resize, self.interpolation, "the image")
        except DatasetError as error:
            raise ClientError(str(error), 413) from error
        except DECODE_ERRORS as error:
            raise ClientError(f"cannot decode the image: {decode_error(error)}") from error
        except Image.DecompressionBombError as error:
            raise ClientError("the image has too many pixels", 413) from error
        return center_crop(square, self.img_size), width, height

    def label(self, probabilities: np.ndarray) -> tuple[int, str, float]:
        best = int(probabilities.argmax())
        return best, self.classes[best], float(probabilities[best])


def center_crop(square: np.ndarray, size: int) -> np.ndarray:
    """torchvision's CenterCrop on a (C, H, W) array at least `size` a side (its rounding)."""
    height, width = square.shape[1:]
    top, left = round((height - size) / 2.0), round((width - size) / 2.0)
    return np.ascontiguousarray(square[:, top : top + size, left : left + size])


def _spec(arg: Any) -> TensorSpec:
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return TensorSpec(arg.name, DATATYPES.get(arg.type, arg.type), shape)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
