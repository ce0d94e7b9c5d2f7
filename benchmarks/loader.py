"""The training loader alone: memory-mapped decoded cache -> augmentation -> batches.

Images/s per loader worker for each augmentation policy, on the CPU path (each worker runs the
policy on one image at a time, as CPU trials do) and on the GPU path (each worker only slices
the cached square; the policy runs batched on the trial's device, workers/train/device_augment.py).
From the per-worker rate follows how many CPU cores one GPU needs to stay fed.
No model runs: this is the input pipeline's own ceiling.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.decoded_cache import varied_jpegs
from workers.config import AUGMENTS, DataConfig, TrialConfig
from workers.data.decoded_cache import load_decoded
from workers.data.loaders import CachedImages, CachedSquares, whole_batch
from workers.data.sources import load_index
from workers.model.preprocessing import stored_size
from workers.train.augment import train_transform
from workers.train.device_augment import DEVICE_POLICIES, DeviceAugment


@dataclass(frozen=True)
class Rate:
    """Images/s of wall time, and images per CPU-second of the process doing the work: the
    per-core rate, which other users of a shared machine cannot dilute."""

    wall: float
    per_cpu_second: float


@dataclass(frozen=True)
class LoaderRow:
    policy: str
    cpu_path: Rate  # one loader worker running the policy image by image
    gpu_path: Rate | None  # one loader worker gathering whole squares (None: `none`)
    device_part: Rate | None  # the batched device policy, run on this machine's CPU


def run(
    n_images: int = 2000,
    img_size: int = 224,
    crop_pct: float = 0.875,
    batch_size: int = 128,
    batches: int = 6,
    data_dir: Path | None = None,
) -> list[LoaderRow]:
    root = varied_jpegs(n_images, data_dir)
    size = stored_size(img_size, crop_pct)
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as cache:
        index = load_index(DataConfig(source=str(root)))
        pixels = load_decoded(index.images, size, cache_dir=Path(cache))
        labels, order = index.labels, np.arange(len(index))
        squares = _rate(CachedSquares(pixels, labels, order), batch_size, batches)
        rows = []
        for policy in AUGMENTS:
            config = TrialConfig(augment=policy)
            cpu = _rate(
                CachedImages(pixels, labels, order, train_transform(config, img_size)),
                batch_size,
                batches,
            )
            device = None
            if policy in DEVICE_POLICIES:
                device = _device_rate(DeviceAugment(config, img_size), pixels, batch_size, batches)
            rows.append(LoaderRow(policy, cpu, squares if device else None, device))
        return rows


def _rate(dataset: CachedImages, batch_size: int, batches: int) -> Rate:
    """One worker process feeding the main process, which only receives its batches."""
    pid = multiprocessing.Value("i", 0)
    loader: DataLoader[Any] = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=1, drop_last=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=whole_batch if isinstance(dataset, CachedSquares) else None,
        worker_init_fn=functools.partial(_record_pid, pid),
        multiprocessing_context="fork",
    )
    stream: Iterator[Any] = iter(loader)
    next(stream)  # the worker's start-up is not throughput
    cpu, started = _cpu_of(pid.value), time.perf_counter()
    for _ in range(batches):
        next(stream)
    wall, cpu = time.perf_counter() - started, _cpu_of(pid.value) - cpu
    return Rate(batches * batch_size / wall, batches * batch_size / max(cpu, 1e-9))


def _record_pid(pid: Any, worker_id: int) -> None:
    pid.value = os.getpid()


def _cpu_of(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux, as the benchmark machines)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _device_rate(augment: DeviceAugment, pixels: np.ndarray, batch_size: int, batches: int) -> Rate:
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(np.array(pixels[:batch_size]))
    augment(batch, rng)
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(batches):
        augment(batch, rng)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Rate(batches * batch_size / wall, batches * batch_size / max(cpu, 1e-9))


def cores_needed(rate_per_worker: float, gpu_images_per_s: float) -> float:
    """Loader workers one GPU needs at that training rate, plus the trial's own process."""
    return gpu_images_per_s / rate_per_worker + 1

