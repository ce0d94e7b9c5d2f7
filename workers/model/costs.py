"""What a configuration costs where it will be deployed: parameters, MACs, latency.

They depend on the backbone and the input size only, not on what a trial learns, so a job knows
them before a trial trains and can refuse one over a limit at no GPU time.

- `params_m`: parameters of the model with the job's head, in millions;
- `macs_g`: multiply-accumulates of one image's forward pass, in billions, by torch's own
  `FlopCounterMode` (two FLOPs a MAC for matmuls and convolutions), on the meta device: no
  memory, no compute, a fraction of a second even for a 300-M-parameter model;
- `latency_ms`: the median of timed forwards of `batch` images on the target after warm-up, with
  onnxruntime (the graph `automl export` writes: uint8 in, normalization inside) or torch, on
  `threads` threads. This one runs the model for real, on the machine that measures it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from workers.config import ConfigError, TrialConfig
from workers.errors import first_line
from workers.model.backbone import create_backbone
from workers.model.preprocessing import default_side
from workers.model.target import Costs, LatencyTarget


def static_costs(backbone: str, img_size: int | None, num_classes: int) -> tuple[float, float, int]:
    """(params_m, macs_g, the image side they are for), counted on the meta device."""
    config = TrialConfig(backbone=backbone, img_size=img_size, pretrained=False)
    with torch.device("meta"):
        model = create_backbone(config, num_classes).eval()
        side = img_size or default_side(backbone)
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.zeros(1, 3, side, side))
    return params / 1e6, counter.get_total_flops() / 2 / 1e9, side


def measure_costs(
    backbone: str, img_size: int | None, num_classes: int, target: LatencyTarget | None
) -> Costs:
    """Parameters and MACs always; latency when a target is given (it runs the model)."""
    params_m, macs_g, side = static_costs(backbone, img_size, num_classes)
    if target is None:
        return Costs(round(params_m, 4), round(macs_g, 4))
    config = TrialConfig(backbone=backbone, img_size=img_size, pretrained=False)
    model = create_backbone(config, num_classes).eval()
    latency = model_latency(model, side, target)
    return Costs(round(params_m, 4), round(macs_g, 4), round(latency, 3))


def model_latency(model: torch.nn.Module, side: int, target: LatencyTarget,
                  warmup: int = 3, runs: int = 10) -> float:
    """Milliseconds per forward of `target.batch` images, the median of `runs`."""
    if target.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("objective.latency.device is cuda, but the machine measuring latency "
                          "has no GPU; measure on cpu, or give the trials a GPU (resources.gpu)")
    if target.runtime == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="automl-latency-") as folder:
            path = Path(folder) / "model.onnx"
            _export_for_timing(model, side, target.batch, path)
            return onnx_latency(path, side, target, warmup, runs)
    return _torch_latency(model, side, target, warmup, runs)


def onnx_latency(path: Path, side: int, target: LatencyTarget, warmup: int = 3,
                 runs: int = 10) -> float:
    """Milliseconds per forward of an exported classifier (uint8 input named `image`)."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = target.threads
    options.inter_op_num_threads = 1
    providers = (["CUDAExecutionProvider"] if target.device == "cuda" else []) + [
        "CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    name = session.get_inputs()[0].name
    kind = session.get_inputs()[0].type
    dtype = np.uint8 if "uint8" in kind else np.float32
    batch = np.random.default_rng(0).integers(0, 256, (target.batch, 3, side, side)).astype(dtype)
    return _median_ms(lambda: session.run(None, {name: batch}), warmup, runs)


def _torch_latency(model: torch.nn.Module, side: int, target: LatencyTarget, warmup: int,
                   runs: int) -> float:
    device = torch.device(target.device)
    model = model.to(device)
    batch = torch.rand(target.batch, 3, side, side, device=device)
    threads = torch.get_num_threads()
    torch.set_num_threads(target.threads)
    try:
        with torch.inference_mode():
            def forward() -> Any:
                out = model(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return out

            return _median_ms(forward, warmup, runs)
    finally:
        torch.set_num_threads(threads)


def _export_for_timing(model: torch.nn.Module, side: int, batch: int, path: Path) -> None:
    """The TorchScript-based exporter first: it traces one forward pass, seconds for most
    backbones; where it cannot translate an operator (VOLO's col2im) the torch.export-based one.
    What is timed is the model's float graph, as serving runs it; `automl export` adds the
    uint8 input and normalization, a rounding error beside the backbone, and checks its file."""
    example = torch.rand(batch, 3, side, side)  # torch.export fixes the batch it is shown
    errors = []
    for dynamo in (False, True):
        try:
            with quiet_exporters():
                torch.onnx.export(model, (example,), str(path), dynamo=dynamo, verbose=False,
                                  input_names=["image"], output_names=["logits"],
                                  dynamic_axes=None if dynamo else {"image": {0: "batch"}})
            return
        except Exception as error:  # the exporters raise many kinds; each means "cannot"
            errors.append(f"{type(error).__name__}: {first_line(str(error)) or '-'}")
    raise ConfigError(
        f"cannot time this backbone on onnxruntime: neither ONNX exporter translates it "
        f"({errors[-1]}); set objective.latency.runtime: torch")


def _median_ms(call: Any, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return float(statistics.median(times))


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The exporter tries several capture strategies and logs each failed one with a traceback
    (and prints its progress): noise when a later one succeeds, and the error says it otherwise."""
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)
    sys.stdout.flush()
    saved = os.dup(1)  # the TorchScript exporter prints its graph from C++ when it fails
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()):
            os.dup2(devnull.fileno(), 1)
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        torch_log.setLevel(level)
