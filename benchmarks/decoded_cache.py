"""Decoded-image cache: start-up and epoch time of trials 2..N, with and without the cache.

Without the cache every trial decodes and resizes every JPEG itself (what a naive ImageFolder
pipeline does); with it, trial 1 decodes once and trials 2..N memory-map the result. Both arms
run the same trial engine on the same generated JPEG dataset; only the cache directory differs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from workers.config import TrialConfig
from workers.datasets import load_index
from workers.engine import prepare_data, train
from workers.model import create_backbone, preprocessing


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
        model = create_backbone(config, len(index.classes))
        data = prepare_data(config, preprocessing(model, config.img_size), index)
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
