"""Decode and resize a dataset's images once per machine, then memory-map them for every trial.

CPU JPEG decode + resize runs at a few hundred images/s per core, far below what a GPU trains at
(DESIGN.md). Trial 50 of a search must not redo trial 1's decoding, so the decoded uint8 pixels
live in one `.npy` file per (dataset fingerprint, stored size, interpolation) under the cache
directory, written atomically, and every later trial memory-maps it.

The fingerprint covers each file's path, size and modification time: re-hashing every byte on
each trial would cost as much as decoding. A changed or added image changes the fingerprint.
Images stored inside parquet or arrow files are fingerprinted by those files the same way.

The file's size is known before anything is decoded (N x 3 x S x S bytes), so a dataset that
does not fit the cache's disk budget is refused up front (`check_cache_budget`), never written
halfway.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.datasets import DatasetError, bound_pixels, decode_error, verify_images
from workers.digits import default_cache_dir

if TYPE_CHECKING:
    from workers.tables import StoredImages

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
CHUNK_IMAGES = 256  # decoded per write: bounds the build's memory, whatever the dataset's size
GB = 1e9
MAX_GB_ENV = "AUTOML_CACHE_MAX_GB"
CACHE_ENV = "AUTOML_CACHE_DIR"  # named in messages, never its path: they reach HTTP clients
MARGIN_SHARE, MARGIN_MIN = 0.05, 1 * GB  # of the cache's filesystem, left free by default

Images: TypeAlias = "Sequence[Path] | StoredImages"  # image files, or images held in tables


def stored_size(img_size: int, crop_pct: float) -> int:
    """Side of the stored square: timm's eval resize (img_size / crop_pct) before the center crop."""
    return math.floor(img_size / crop_pct)


def fingerprint(images: Images, size: int, interpolation: str) -> str:
    digest = hashlib.sha256(f"v2:{size}:{interpolation}".encode())  # v2: 16-bit images scaled
    if isinstance(images, Sequence):
        files: Sequence[Path] = images
    else:
        files = images.files()
        digest.update(f"table:{images.column}:{len(images)}\n".encode())
    # One realpath per folder, not per file: 100,000 files in 100 folders cost 100.
    real_dirs: dict[str, str] = {}
    for path in files:
        text = os.fspath(path)
        parent, _, name = text.rpartition(os.sep)
        real = real_dirs.get(parent)
        if real is None:
            real = real_dirs[parent] = os.path.realpath(parent or ".")
        stat = os.stat(text)
        digest.update(f"{real}{os.sep}{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def decoded_path(
    images: Images, size: int, interpolation: str = "bicubic", cache_dir: Path | None = None
) -> Path:
    """The cache file a trial reads for these images at this size (it may not exist yet)."""
    folder = (cache_dir or default_cache_dir()) / "decoded"
    return folder / f"{fingerprint(images, size, interpolation)}.npy"


def load_decoded(
    images: Images,
    size: int,
    interpolation: str = "bicubic",
    cache_dir: Path | None = None,
) -> np.ndarray:
    """Return an (N, 3, size, size) uint8 array of all images, decoding only on a cache miss."""
    target = decoded_path(images, size, interpolation, cache_dir)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Trials starting together on one machine decode once: the others wait on the lock.
        with open(target.parent / f".{target.stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                # under the lock: a sibling trial's half-written file must not count against us
                check_cache_budget(len(images), size, cache_dir)
                _decode_all(images, size, interpolation, target)
                _mark_verified(_verified_marker(images, cache_dir))  # every image decoded
    return np.load(target, mmap_mode="r")


def verify_once(images: Images, cache_dir: Path | None = None) -> None:
    """`verify_images`, skipped when these exact files (paths, sizes, modification times, as the
    decoded cache's key) were verified or decoded on this machine before.

    A job's driver checks every image before its trials start; for a large dataset, reading
    every header again for each job on it is a wait before any trial, for files the cache
    already vouches for (docs/benchmarks.md has the numbers).
    """
    marker = _verified_marker(images, cache_dir)
    if marker.exists():
        return
    verify_images(images)
    _mark_verified(marker)


def _verified_marker(images: Images, cache_dir: Path | None) -> Path:
    folder = (cache_dir or default_cache_dir()) / "decoded"
    return folder / f"{fingerprint(images, 0, 'verified')}.verified"


def _mark_verified(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def decoded_bytes(n_images: int, size: int | Sequence[int]) -> int:
    """Bytes the decoded cache needs for `n_images` at each stored side in `size` (.npy header
    included): known before a single image is decoded."""
    sizes = [size] if isinstance(size, int) else list(size)
    return sum(_header_bytes(n_images, side) + n_images * 3 * side * side for side in sizes)


@dataclass(frozen=True)
class CacheBudget:
    """How many more bytes the decoded cache may write, and where that limit comes from."""

    available: int
    reason: str


def cache_budget(cache_dir: Path | None = None) -> CacheBudget:
    """The bytes a new decoded file may take.

    `AUTOML_CACHE_MAX_GB` (decimal GB) caps everything under `decoded/` together; without it the
    cap is the free disk of the cache's filesystem less a safety margin (5% of the filesystem,
    at least 1 GB) that keeps room for checkpoints and logs. Either way the free disk is a hard
    limit: a file that cannot be written completely is not started.
    """
    folder = (cache_dir or default_cache_dir()) / "decoded"
    probe = _existing_parent(folder)
    disk = os.statvfs(probe)
    free, total = disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
    raw = os.environ.get(MAX_GB_ENV, "").strip()
    if raw:
        try:
            max_gb = float(raw)
        except ValueError:
            max_gb = -1.0
        if not math.isfinite(max_gb) or max_gb < 0:
            raise DatasetError(
                f"{MAX_GB_ENV}={raw!r} is not a size in GB; set it to a number such as 200, "
                "or unset it to use the free disk"
            )
        held = sum(p.stat().st_size for p in folder.glob("*.npy")) if folder.is_dir() else 0
        allowed = int(max_gb * GB) - held
        if allowed <= free:
            return CacheBudget(
                max(allowed, 0),
                f"{MAX_GB_ENV}={raw} less {_gb(held)} other cached datasets hold",
            )
        return CacheBudget(free, f"the free disk under {CACHE_ENV}, below {MAX_GB_ENV}={raw}")
    margin = max(MARGIN_MIN, MARGIN_SHARE * total)
    return CacheBudget(
        max(int(free - margin), 0),
        f"the free disk under {CACHE_ENV} ({_gb(free)}) less a {_gb(margin)} safety margin",
    )


def check_cache_budget(
    n_images: int, size: int | Sequence[int], cache_dir: Path | None = None
) -> None:
    """Refuse, before any byte is written, a decoded cache that would not fit its budget.

    A job's driver calls this in its preflight for the stored sizes its trials will need (those
    whose `decoded_path` does not exist yet); each trial calls it again before decoding, on the
    machine that holds the cache.
    """
    need = decoded_bytes(n_images, size)
    budget = cache_budget(cache_dir)
    if need <= budget.available:
        return
    sides = [size] if isinstance(size, int) else list(size)
    shape = " + ".join(f"{side}x{side}" for side in sides)
    raise DatasetError(
        f"the decoded-image cache needs {_gb(need)} for {n_images:,} images at {shape} px "
        f"(3 bytes a pixel), over its budget of {_gb(budget.available)} ({budget.reason}); "
        f"raise {MAX_GB_ENV}, free disk there, point {CACHE_ENV} at a larger disk, "
        "or use a smaller img_size"
    )


def decode_one(path: Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the shorter side to `size`, center-crop a square; (3, size, size) uint8."""
    try:
        return _decode(path, size, interpolation, f"image {path}")
    except DatasetError:
        raise
    except DECODE_ERRORS as error:
        raise DatasetError(
            f"cannot decode image {path}: {error}; replace or remove the file"
        ) from error


def _decode(source: Path | BinaryIO, size: int, interpolation: str, where: str) -> np.ndarray:
    with Image.open(source) as image:
        bound_pixels(image, size, where)
        rgb = to_rgb(image)
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


@dataclass
class _Chunk:
    """Consecutive images to decode: each a file, or encoded bytes with the place to name."""

    items: list[Path | bytes]
    where: list[str]  # for bytes: "file row n"; for files, unused


def _chunks(images: Images) -> Iterator[_Chunk]:
    if isinstance(images, Sequence):
        for start in range(0, len(images), CHUNK_IMAGES):
            yield _Chunk(list(images[start : start + CHUNK_IMAGES]), [])
        return
    for rows in images.encoded(CHUNK_IMAGES):
        yield _Chunk([r.data for r in rows], [r.where for r in rows])


def _decode_item(chunk: _Chunk, j: int, size: int, interpolation: str) -> np.ndarray:
    item = chunk.items[j]
    if isinstance(item, Path):
        return decode_one(item, size, interpolation)
    try:
        return _decode(io.BytesIO(item), size, interpolation, f"{chunk.where[j]}: the image")
    except DatasetError:
        raise
    except DECODE_ERRORS as error:
        raise DatasetError(
            f"{chunk.where[j]}: cannot decode image ({decode_error(error)}); "
            "replace or remove the row"
        ) from error


def _decode_all(images: Images, size: int, interpolation: str, target: Path) -> None:
    """Decode chunk by chunk into a temporary file, renamed into place once complete.

    Written sequentially rather than through a writable memory map: a mapped file's dirty pages
    count towards the process's resident memory until written back, so a 20 GB cache built
    through `open_memmap` peaked at the cache's size. Chunk k+1 decodes while chunk k is written.
    """
    handle, tmp_name = tempfile.mkstemp(prefix=".decoding-", suffix=".npy", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            np.lib.format.write_array_header_1_0(out, _header(len(images), size))
            # PIL releases the GIL while decoding and resizing, so threads scale across cores.
            with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
                pending: tuple[list[Future[np.ndarray]], np.ndarray] | None = None
                for chunk in _chunks(images):
                    futures = [
                        pool.submit(_decode_item, chunk, j, size, interpolation)
                        for j in range(len(chunk.items))
                    ]
                    if pending is not None:
                        _write_chunk(out, *pending)
                    pending = futures, np.empty((len(futures), 3, size, size), np.uint8)
                if pending is not None:
                    _write_chunk(out, *pending)
            written = out.tell()
        due = decoded_bytes(len(images), size)
        if written != due:
            raise DatasetError(
                f"the decoded-image cache: wrote {written:,} bytes where {due:,} were due; the "
                "dataset changed while it was decoded, start the trial again"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _write_chunk(out: BinaryIO, futures: list[Future[np.ndarray]], buffer: np.ndarray) -> None:
    for j, future in enumerate(futures):
        buffer[j] = future.result()
    out.write(buffer.data)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _gb(n_bytes: float) -> str:
    """Bytes as a person reads them: GB, or MB / KB below (a 40 KB budget is not "0.0 GB")."""
    for unit, scale in (("GB", GB), ("MB", 10**6)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes / 1000:,.1f} KB"


def _header(n_images: int, size: int) -> dict[str, object]:
    return {"descr": "|u1", "fortran_order": False, "shape": (n_images, 3, size, size)}


def _header_bytes(n_images: int, size: int) -> int:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, _header(n_images, size))
    return len(buffer.getvalue())  # 128 for any realistic shape: numpy pads to a multiple of 64
