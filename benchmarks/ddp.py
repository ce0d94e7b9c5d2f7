"""Data-parallel trials: images/s of one trial over 1 vs N workers, and whether N workers learn
what one does with the same global batch.

Each arm is the trial engine itself (`workers.train.loop.train`) in N processes started with
torch.multiprocessing and a real process group (gloo on CPUs, NCCL on GPUs), as Ray Train
starts them in a job but without Ray's start-up, which is paid once per trial and is not the
engine's rate. Throughput is the engine's own `train_images_per_second` of the last epoch
(the whole group's images over the train phase, caches warm, checkpoints excluded). On a CPU
each worker gets one thread (OMP_NUM_THREADS=1): N workers on N cores against one worker on
one, the scaling a CPU trial of `resources: {workers: N, cpu: 1}` sees. With CUDA each worker
gets a GPU, bf16 autocast and channels_last (the engine's GPU path), on resnet50 and
vit_base_patch16_224 at 224 px over generated images.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CPU_CONFIG: dict[str, Any] = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64,
                              "lr": 3e-3, "augment": "none", "source": "builtin:digits"}
GPU_MODELS = ("resnet50", "vit_base_patch16_224")


@dataclass(frozen=True)
class Arm:
    """One run of one trial over `workers` processes."""

    model: str
    device: str
    workers: int
    seed: int
    images_per_second: float
    val_accuracy: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, config: dict[str, Any], out: str) -> None:
    """One worker: its process group, its device, the engine; rank 0 writes the last epoch."""
    import torch.distributed as dist

    from workers.config import TrialConfig
    from workers.train.loop import train

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                init_method=f"tcp://127.0.0.1:{port}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ddp-") as workdir:
            device = torch.device("cuda", rank) if cuda else torch.device("cpu")
            summary = train(TrialConfig.from_dict(config), Path(workdir), keep_best=False,
                            device=device)
        if rank == 0:
            Path(out).write_text(json.dumps(summary.history[-1]))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_arm(config: dict[str, Any], workers: int) -> dict[str, Any]:
    """The last epoch's metrics of one trial over `workers` processes."""
    import torch.multiprocessing as mp

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        out = Path(tmp) / "last.json"
        mp.spawn(_rank, args=(workers, _free_port(), config, str(out)), nprocs=workers,
                 join=True)
        return dict(json.loads(out.read_text()))


def throughput(workers: int, epochs: int, n_images: int = 0) -> list[Arm]:
    """1 vs `workers` workers: on GPUs resnet50 and vit_base at 224 px (bf16, 128 images per
    GPU), else the tiny test model on the digits (the same global batch of 64)."""
    if not torch.cuda.is_available():
        config = {**CPU_CONFIG, "epochs": epochs}
        return [_arm(config, "test_resnet", "cpu", n, 0) for n in sorted({1, workers})]
    from benchmarks.decoded_cache import write_jpegs

    workers = min(workers, torch.cuda.device_count())
    arms = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-gpu-") as tmp:
        root = write_jpegs(Path(tmp) / "images", n_images or 128 * 16 * workers, side=256)
        for model in GPU_MODELS:  # 128 images per GPU: the global batch grows with the GPUs
            config = {"backbone": model, "img_size": 224, "epochs": epochs, "augment": "basic",
                      "source": str(root), "val_fraction": 0.05, "test_fraction": 0.0,
                      "optimizer": "sgd", "schedule": "constant", "amp": True}
            arms += [_arm({**config, "batch_size": 128 * n}, model, "cuda", n, 0)
                     for n in sorted({1, workers})]
    return arms


def accuracy(workers: int, seeds: int, epochs: int) -> list[Arm]:
    """1 vs `workers` workers on the digits, the same global batch, `seeds` seeds each."""
    return [_arm({**CPU_CONFIG, "epochs": epochs, "seed": seed}, "test_resnet", "cpu", n, seed)
            for seed in range(seeds) for n in (1, workers)]


def _arm(config: dict[str, Any], model: str, device: str, workers: int, seed: int) -> Arm:
    last = run_arm(config, workers)
    return Arm(model, device, workers, seed, float(last["train_images_per_second"]),
               float(last["val_accuracy"]))
