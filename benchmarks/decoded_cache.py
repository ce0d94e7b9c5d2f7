"""Decoded-image cache: start-up and epoch time of trials 2..N, with and without the cache
(`run`), and the cache at a real dataset's size (`scale`).

Without the cache every trial decodes and resizes every JPEG itself (what a naive ImageFolder
pipeline does); with it, trial 1 decodes once and trials 2..N memory-map the result. Both arms
run the same trial engine on the same generated JPEG dataset; only the cache directory differs.
`scale` builds the cache of 100,000 varied JPEGs at the default 224 px stored side and measures
what a second job on the same dataset pays before its first step.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from workers.config import DataConfig, TrialConfig
from workers.data.digits import default_cache_dir
from workers.data.sources import load_index
from workers.model.backbone import create_backbone
from workers.model.preprocessing import preprocessing, stored_size
from workers.train.loop import train
from workers.train.prepared import prepare_data


@dataclass(frozen=True)
class CacheRow:
    arm: str  # "cache" or "no cache"
    trial: int
    startup_s: float  # index + decode (or memory-map) before the first step
    epoch_s: float  # the first epoch, train + eval


def write_jpegs(root: Path, n_images: int, n_classes: int = 4, side: int = 320) -> Path:
    """Realistic decode work: full-size noisy JPEGs, not 8x8 digits."""
    rng = np.random.default_rng(0)
    for index in range(n_images):
        folder = root / f"class{index % n_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, size=(side // 8, side // 8, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR)
        image.save(folder / f"{index:05d}.jpg", quality=90)
    return root


BENCH_DATA_VERSION = 1  # bump when the generated images change


def bench_dir() -> Path:
    """Where generated benchmark datasets live between runs (`AUTOML_BENCH_DIR`)."""
    return Path(os.environ.get("AUTOML_BENCH_DIR", default_cache_dir() / "bench"))


def varied_jpegs(n_images: int, root: Path | None = None, n_classes: int = 100) -> Path:
    """An ImageFolder of `n_images` JPEGs, 200-800 px per side at any aspect, made once and reused.

    100,000 of them take minutes to write on 2 cores, so they are a fixture of the benchmark:
    written under `bench_dir()` into a staging folder (resumable: each image is a function of
    its index, written atomically) and renamed into place when complete.
    """
    final = _fixture_path(n_images, root)
    if (final / ".complete").exists():
        return final
    n_classes = min(n_classes, max(1, n_images // 3))  # a split needs 3 images of each class
    staging = final.with_name(f".{final.name}.partial")
    for k in range(n_classes):
        (staging / f"class{k:03d}").mkdir(parents=True, exist_ok=True)
    workers = max(1, os.cpu_count() or 1)
    chunks = [range(start, min(start + 500, n_images)) for start in range(0, n_images, 500)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_varied, [(staging, c.start, c.stop, n_classes) for c in chunks]))
    (staging / ".complete").touch()
    staging.rename(final)
    return final


def _write_varied(job: tuple[Path, int, int, int]) -> None:
    staging, start, stop, n_classes = job
    for index in range(start, stop):
        target = staging / f"class{index % n_classes:03d}" / f"{index:06d}.jpg"
        if target.exists():
            continue
        rng = np.random.default_rng(index)
        width, height = (int(v) for v in rng.integers(200, 801, size=2))
        # smooth colour fields plus fine grain: about 85 KB at q90 for a 500 px image
        base = rng.integers(0, 256, size=(max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC))
        grain = rng.integers(-6, 7, size=(height, width, 1), dtype=np.int16)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        partial = target.with_suffix(".tmp")
        Image.fromarray(pixels).save(partial, format="JPEG", quality=90)
        os.replace(partial, target)


def run(
    n_images: int = 2000, trials: int = 4, img_size: int = 64, epochs: int = 1
) -> list[CacheRow]:
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        root = write_jpegs(Path(tmp) / "images", n_images)
        config = TrialConfig.from_dict({
            "backbone": "test_resnet.r160_in1k", "img_size": img_size, "epochs": epochs,
            "augment": "basic", "source": str(root),
        })
        rows: list[CacheRow] = []
        shared = Path(tmp) / "shared-cache"
        for arm in ("cache", "no cache"):
            for trial in range(1, trials + 1):
                cache = shared if arm == "cache" else Path(tmp) / f"fresh-{trial}"
                rows.append(_one_trial(config, cache, Path(tmp) / f"run-{arm}-{trial}", arm, trial))
        return rows


def _one_trial(config: TrialConfig, cache: Path, workdir: Path, arm: str, trial: int) -> CacheRow:
    with _cache_dir(cache):
        started = time.perf_counter()
        index = load_index(config.data)
        create_backbone(config, len(index.classes))  # a trial pays it before its data
        data = prepare_data(config, preprocessing(config.backbone, config.img_size), index)
        startup = time.perf_counter() - started
        summary = train(config, workdir, data=data)
    return CacheRow(arm, trial, startup, float(summary.history[0]["epoch_seconds"]))


@contextlib.contextmanager
def _cache_dir(path: Path) -> Iterator[None]:
    previous = os.environ.get("AUTOML_CACHE_DIR")
    os.environ["AUTOML_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("AUTOML_CACHE_DIR", None)
        else:
            os.environ["AUTOML_CACHE_DIR"] = previous


@dataclass(frozen=True)
class ScaleResult:
    """The decoded cache on one dataset: built once, then opened by a second job."""

    n_images: int
    size: int
    generated_s: float | None  # None: the generated JPEGs were already there
    cores: int
    build: dict[str, float]  # index_s, build_s, peak_rss_bytes, disk_bytes
    second: dict[str, float]  # index_s, fingerprint_s, open_s, verify_s, rebuilt (0/1)


def scale(
    n_images: int = 100_000,
    img_size: int = 224,
    crop_pct: float = 0.875,
    data_dir: Path | None = None,
    keep: bool = False,
    parquet: bool = False,
) -> ScaleResult:
    """Build the cache of `n_images` varied JPEGs at timm's default stored side, then open it
    as a second job would. Each job runs in a fresh process, so its peak RSS is its own.
    `parquet`: the same JPEGs as bytes in one Hub-style parquet file (see `parquet_fixture`)."""
    import multiprocessing
    import shutil

    started = time.perf_counter()
    done_before = (_fixture_path(n_images, data_dir) / ".complete").exists()
    root = varied_jpegs(n_images, data_dir)
    if parquet:
        done_before = done_before and _parquet_path(root).exists()
        root = parquet_fixture(root)
    generated = None if done_before else time.perf_counter() - started
    size = stored_size(img_size, crop_pct)
    cache = root.parent / f"cache-{root.name}-{size}"
    shutil.rmtree(cache, ignore_errors=True)
    context = multiprocessing.get_context("spawn")
    try:
        with context.Pool(1) as pool:
            build = pool.apply(_build_job, (root, size, cache))
        with context.Pool(1) as pool:
            second = pool.apply(_second_job, (root, size, cache))
    finally:
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
    return ScaleResult(n_images, size, generated, len(os.sched_getaffinity(0)), build, second)


def parquet_fixture(folder: Path, rows_per_group: int = 10_000) -> Path:
    """The ImageFolder's JPEGs as one parquet file in the Hub's format ({bytes, path} structs,
    ClassLabel names in the schema metadata), in row groups of `rows_per_group`: 770 MB each,
    the big-row-group case a reader must stream rather than load whole."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    target = _parquet_path(folder)
    if target.exists():
        return target.parent
    index = load_index(DataConfig(source=str(folder)))
    features = {"image": {"_type": "Image"},
                "label": {"names": list(index.classes), "_type": "ClassLabel"}}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("label", pa.int64())]).with_metadata(
        {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    )
    partial = target.with_suffix(".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, len(index), rows_per_group):
            paths = index.paths[start : start + rows_per_group]
            images = [{"bytes": p.read_bytes(), "path": p.name} for p in paths]
            labels = index.labels[start : start + rows_per_group]
            writer.write_table(pa.table({"image": pa.array(images, image_type), "label": labels},
                                        schema=schema), row_group_size=rows_per_group)
    os.replace(partial, target)
    return target.parent


def _parquet_path(folder: Path) -> Path:
    return folder.parent / f"{folder.name}-parquet" / "train-00000-of-00001.parquet"


def _fixture_path(n_images: int, data_dir: Path | None) -> Path:
    return (data_dir or bench_dir()) / f"jpegs-v{BENCH_DATA_VERSION}-{n_images}"


def _build_job(root: Path, size: int, cache: Path) -> dict[str, float]:
    from workers.data.decoded_cache import load_decoded, verify_once

    baseline = _rss()
    started = time.perf_counter()
    index = load_index(DataConfig(source=str(root)))
    indexed = time.perf_counter()
    verify_once(index.images, cache)  # the first job's driver: every header read
    verified = time.perf_counter()
    cpu_before = _cpu_seconds()
    pixels = load_decoded(index.images, size, cache_dir=cache)
    built = time.perf_counter()
    cpu_s = _cpu_seconds() - cpu_before
    files = list((cache / "decoded").glob("*.npy"))
    return {
        "index_s": indexed - started,
        "verify_s": verified - indexed,
        "build_s": built - verified,
        "build_cpu_s": cpu_s,  # images per CPU-second: the per-core rate, shared cores or not
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": _rss("VmHWM"),
        "disk_bytes": sum(f.stat().st_blocks * 512 for f in files),
        "shape_ok": float(pixels.shape == (len(index), 3, size, size)),
        "load_1min": os.getloadavg()[0],  # other users share the benchmark machine's cores
    }


def _second_job(root: Path, size: int, cache: Path) -> dict[str, float]:
    """What a job on the same dataset pays before its first step: the driver's index and image
    check, and each trial's fingerprint and memory-map (no decoding: the file is reused)."""
    from workers.data.decoded_cache import decoded_path, load_decoded, verify_once
    from workers.data.images import verify_images

    baseline = _rss()
    before = {f: f.stat().st_mtime_ns for f in (cache / "decoded").glob("*.npy")}
    started = time.perf_counter()
    index = load_index(DataConfig(source=str(root)))
    indexed = time.perf_counter()
    verify_once(index.images, cache)  # the driver: skipped, the files are known good
    verified = time.perf_counter()
    target = decoded_path(index.images, size, cache_dir=cache)
    fingerprinted = time.perf_counter()
    load_decoded(index.images, size, cache_dir=cache)  # a trial: fingerprint, then map
    opened = time.perf_counter()
    verify_images(index.images)  # what the driver paid per job before verify_once
    full_verify = time.perf_counter()
    after = {f: f.stat().st_mtime_ns for f in (cache / "decoded").glob("*.npy")}
    return {
        "index_s": indexed - started,
        "verify_s": verified - indexed,
        "fingerprint_s": fingerprinted - verified,
        "open_s": opened - fingerprinted,
        "full_verify_s": full_verify - opened,
        "rebuilt": float(after != before or target not in before),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": _rss("VmHWM"),
    }


def _cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def _rss(field: str = "VmRSS") -> float:
    """The process's resident set now (VmRSS) or at its peak (VmHWM), mapped file pages
    included; Linux only, as the benchmark machines."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return float(line.split()[1]) * 1024
    return float("nan")
