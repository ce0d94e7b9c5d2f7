"""Decode and resize a dataset's images once per machine, then memory-map them for every trial.

CPU JPEG decode + resize runs at a few hundred images/s per core, far below what a GPU trains at
(DESIGN.md). Trial 50 of a search must not redo trial 1's decoding, so the decoded uint8 pixels
live in one `.npy` file per (dataset fingerprint, stored size, interpolation) under the cache
directory, written atomically, and every later trial memory-maps it.

The fingerprint covers each file's path, size and modification time: re-hashing every byte on
each trial would cost as much as decoding. A changed or added image changes the fingerprint.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.datasets import DatasetError
from workers.digits import default_cache_dir

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def stored_size(img_size: int, crop_pct: float) -> int:
    """Side of the stored square: timm's eval resize (img_size / crop_pct) before the center crop."""
    return math.floor(img_size / crop_pct)


def fingerprint(paths: Sequence[Path], size: int, interpolation: str) -> str:
    digest = hashlib.sha256(f"v2:{size}:{interpolation}".encode())  # v2: 16-bit images scaled
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def load_decoded(
    paths: Sequence[Path],
    size: int,
    interpolation: str = "bicubic",
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Return an (N, 3, size, size) uint8 array of all images, decoding only on a cache miss."""
    folder = (cache_dir or default_cache_dir()) / "decoded"
    target = folder / f"{fingerprint(paths, size, interpolation)}.npy"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # Trials starting together on one machine decode once: the others wait on the lock.
        with open(folder / f".{target.stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                _decode_all(paths, size, interpolation, target)
    return np.load(target, mmap_mode="r")


def decode_one(path: Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the shorter side to `size`, center-crop a square; (3, size, size) uint8."""
    try:
        with Image.open(path) as image:
            rgb = to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"cannot decode image {path}: {error}; replace or remove the file"
        ) from error
    width, height = rgb.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    rgb = rgb.resize((new_w, new_h), INTERPOLATIONS[interpolation])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, with 16-bit and 32-bit integer images scaled down, not clipped.

    PIL's own `convert("RGB")` clips a 16-bit image (common in medical and satellite data) at
    255, so nearly every pixel turns white and a trial trains on noise without an error. Scaled
    by the full 16-bit range, as torchvision's `ToDtype(torch.uint8, scale=True)` does a uint16
    tensor; a 32-bit integer image (PIL mode "I", how some decoders hand over 16-bit TIFFs) is
    read the same way.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) // 257
        image = Image.fromarray(pixels.astype(np.uint8), "L")
    return image.convert("RGB")


def _decode_all(paths: Sequence[Path], size: int, interpolation: str, target: Path) -> None:
    handle, tmp_name = tempfile.mkstemp(prefix=".decoding-", suffix=".npy", dir=target.parent)
    os.close(handle)
    try:
        array = np.lib.format.open_memmap(
            tmp_name, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size)
        )

        def fill(index: int) -> None:
            array[index] = decode_one(paths[index], size, interpolation)

        # PIL releases the GIL while decoding and resizing, so threads scale across cores.
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            list(pool.map(fill, range(len(paths))))
        array.flush()
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
