"""`automl evaluate` at 10k and 100k images: seconds, images/s, peak RSS and the report's size.

A tiny model (test_resnet, from scratch, 32 px, one epoch on 2,000 generated images) evaluated
on generated 32 px PNGs held in one Hub-style parquet file (PNG bytes; the fastest fixture to
write: 100,000 in seconds). Every row runs in a fresh spawned process, so its peak RSS
(getrusage's ru_maxrss) is its own; the decoded-image cache of the dataset is built first, in
a process of its own, so the rows time evaluation, not the one-time decode.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.decoded_cache import bench_dir

SIDE = 32
CLASSES = 10
DATA_VERSION = 1  # bump when the generated images change
MODEL = {"backbone": "test_resnet.r160_in1k", "pretrained": False, "img_size": SIDE,
         "batch_size": 64, "lr": 3e-3, "epochs": 1, "freeze_stages": 0}


@dataclass(frozen=True)
class EvalRow:
    images: int
    corruptions: bool
    seconds: float  # evaluate() itself, after the imports and the model's load
    peak_rss_bytes: int
    report_bytes: int
    accuracy: float


@dataclass(frozen=True)
class DecodeRow:
    images: int
    seconds: float
    peak_rss_bytes: int


def png_parquet(n_images: int, root: Path, seed: int = 0) -> Path:
    """`n_images` 32 px PNGs in one parquet file (Hub format, as `parquet_fixture`), made once:
    a colour per class under noise, so a model learns something in one epoch."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = root / f"pngs-v{DATA_VERSION}-{n_images}-seed{seed}"
    target = folder / "train-00000-of-00001.parquet"
    if target.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class{k}" for k in range(CLASSES)]
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("label", pa.int64())]).with_metadata(
        {b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    colours = np.random.default_rng(1234).integers(0, 256, (CLASSES, 3))
    rng = np.random.default_rng(seed)
    partial = target.with_suffix(".partial")
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, n_images, 10_000):
            stop = min(start + 10_000, n_images)
            labels = np.arange(start, stop) % CLASSES
            noise = rng.integers(-90, 91, (stop - start, SIDE, SIDE, 3))
            pixels = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
            images = []
            for i, image in enumerate(pixels):
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                images.append({"bytes": buffer.getvalue(), "path": f"{start + i:06d}.png"})
            writer.write_table(pa.table({"image": pa.array(images, image_type),
                                         "label": labels.astype(np.int64)}, schema=schema))
    os.replace(partial, target)
    return folder


def run(sizes: tuple[int, ...] = (10_000, 100_000), corruptions_up_to: int = 100_000,
        data_dir: Path | None = None) -> tuple[list[DecodeRow], list[EvalRow]]:
    """Decode each dataset once, then evaluate it without and (up to `corruptions_up_to`
    images) with the corruption suite; every step in its own process."""
    root = data_dir or bench_dir() / "evaluation"
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["AUTOML_CACHE_DIR"] = str(cache)  # the spawned children inherit it
    context = multiprocessing.get_context("spawn")
    decodes, rows = [], []
    try:
        with context.Pool(1) as pool:
            checkpoint = pool.apply(_train, (png_parquet(2_000, root, seed=1), root / "model"))
        for n in sizes:
            data = png_parquet(n, root)
            with context.Pool(1) as pool:
                decodes.append(pool.apply(_decode, (checkpoint, data, n)))
            for corruptions in (False, True):
                if corruptions and n > corruptions_up_to:
                    continue
                with context.Pool(1) as pool:
                    rows.append(pool.apply(_evaluate, (checkpoint, data, n, corruptions)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return decodes, rows


def _train(source: Path, folder: Path) -> Path:
    from workers.config import TrialConfig
    from workers.train.loop import train

    shutil.rmtree(folder, ignore_errors=True)
    checkpoint = train(TrialConfig.from_dict({**MODEL, "source": str(source)}),
                       folder).best_checkpoint
    assert checkpoint is not None
    return checkpoint


def _decode(checkpoint: Path, data: Path, n: int) -> DecodeRow:
    from workers.evaluate.dataset import select
    from workers.evaluate.predictions import decoded_pixels
    from workers.predict import load_checkpoint

    started = time.perf_counter()
    loaded = load_checkpoint(checkpoint)
    decoded_pixels(loaded, select(loaded, str(data), "all"))
    return DecodeRow(n, time.perf_counter() - started, _peak_rss())


def _evaluate(checkpoint: Path, data: Path, n: int, corruptions: bool) -> EvalRow:
    from workers.evaluate.report import evaluate

    started = time.perf_counter()
    report = evaluate(checkpoint, str(data), "all", corruptions=corruptions)
    seconds = time.perf_counter() - started
    size = len(json.dumps(report.to_dict()).encode())
    assert report.images == n
    return EvalRow(n, corruptions, seconds, _peak_rss(), size, report.metrics["accuracy"])


def _peak_rss() -> int:
    """The process's own peak RSS: VmHWM, the high-water mark of its memory map since exec.
    getrusage's ru_maxrss would not do: Linux carries the peak of the process it was forked
    from across the exec of a spawned child (every row read the parent's 1.4 GB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: KiB
