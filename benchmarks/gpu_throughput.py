"""Training throughput of one trial vs timm's own training benchmark, and GPU sharing.

The reference mirrors timm's `benchmark.py` train mode: synthetic batches already on the device,
channels_last, bf16 autocast, SGD, cross-entropy, timed after warm-up with device syncs. The
trial engine runs its real loop on a generated dataset (decoded cache warm): DataLoader, uint8
to device, normalization there, augmentation, checkpoint writes excluded (train phase only).
The ratio engine / reference is the share of the GPU's training speed a trial actually gets.
Without a GPU it still runs (small model, CPU) and says so: the CPU numbers do not speak to
the >= 0.95 target.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.optim import create_optimizer_v2

from benchmarks.decoded_cache import write_jpegs
from workers.config import TrialConfig
from workers.train.loop import train

GPU_MODELS = ("resnet50", "vit_small_patch16_224")
CPU_MODELS = ("test_resnet",)


@dataclass(frozen=True)
class ThroughputRow:
    model: str
    device: str
    batch_size: int
    img_size: int
    reference_ips: float
    engine_ips: float

    @property
    def ratio(self) -> float:
        return self.engine_ips / self.reference_ips


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reference_ips(name: str, batch_size: int, img_size: int, steps: int, dev: torch.device) -> float:
    """timm benchmark.py's training loop: the ceiling for this model, batch and precision."""
    model = timm.create_model(name, num_classes=1000).to(dev).train()
    channels_last = dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=1e-4)
    images = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch_size,), device=dev)

    def step() -> None:
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(max(2, steps // 5)):
        step()
    _sync(dev)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return batch_size * steps / (time.perf_counter() - started)


def engine_ips(name: str, batch_size: int, img_size: int, n_images: int, root: Path) -> float:
    """Images/s of the trial engine's train phase in its second epoch (caches warm)."""
    config = TrialConfig.from_dict({
        "backbone": name, "img_size": img_size, "epochs": 2, "batch_size": batch_size,
        "augment": "basic", "source": str(root), "val_fraction": 0.05, "test_fraction": 0.0,
        "optimizer": "sgd", "schedule": "constant",
    })
    with tempfile.TemporaryDirectory() as workdir:
        summary = train(config, Path(workdir))
    return float(summary.history[-1]["train_images_per_second"])


def run(steps: int = 30, n_images: int = 0) -> list[ThroughputRow]:
    dev = device()
    gpu = dev.type == "cuda"
    models, batch, size = (GPU_MODELS, 128, 224) if gpu else (CPU_MODELS, 32, 64)
    n_images = n_images or (batch * 24 if gpu else batch * 8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        root = write_jpegs(Path(tmp) / "images", n_images, side=size + size // 7)
        for name in models:
            reference = reference_ips(name, batch, size, steps, dev)
            rows.append(ThroughputRow(name, dev.type, batch, size, reference,
                                      engine_ips(name, batch, size, n_images, root)))
    return rows


def sharing(trials: int = 4, n_images: int = 512) -> dict[str, float]:
    """Four small trials at once on one device vs one after another: total images/s."""
    dev = device()
    size, name = (128, "resnet18") if dev.type == "cuda" else (48, "test_resnet")
    with tempfile.TemporaryDirectory(prefix="bench-share-") as tmp:
        root = write_jpegs(Path(tmp) / "images", n_images, side=size + size // 7)
        command = [sys.executable, "-m", "benchmarks.gpu_throughput", name, str(size), str(root)]
        subprocess.run(command, check=True, capture_output=True)  # warm the decoded cache
        started = time.perf_counter()
        for _ in range(trials):
            subprocess.run(command, check=True, capture_output=True)
        sequential = time.perf_counter() - started
        started = time.perf_counter()
        running = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(trials)]
        for process in running:
            process.communicate()
        shared = time.perf_counter() - started
    return {"device": 1.0 if dev.type == "cuda" else 0.0, "sequential_s": sequential,
            "shared_s": shared, "speedup": sequential / shared}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":  # one small trial, for `sharing`
    name, size, root = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps({"ips": engine_ips(name, 32, size, 0, root)}))
