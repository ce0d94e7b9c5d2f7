"""The decoded cache's disk budget: its size is known before anything is decoded (N x 3 x S x S
bytes), so a dataset that does not fit is refused up front, never written halfway."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.data.digits import default_cache_dir
from workers.data.index import DatasetError

GB = 1e9
MAX_GB_ENV = "AUTOML_CACHE_MAX_GB"
CACHE_ENV = "AUTOML_CACHE_DIR"  # named in messages, never its path: they reach HTTP clients
MARGIN_SHARE, MARGIN_MIN = 0.05, 1 * GB  # of the cache's filesystem, left free by default


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


def npy_header(n_images: int, size: int) -> dict[str, object]:
    return {"descr": "|u1", "fortran_order": False, "shape": (n_images, 3, size, size)}


def _header_bytes(n_images: int, size: int) -> int:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, npy_header(n_images, size))
    return len(buffer.getvalue())  # 128 for any realistic shape: numpy pads to a multiple of 64
