"""Decode and resize a dataset's images once per machine, then memory-map them for every trial.

CPU JPEG decode + resize runs at a few hundred images/s per core, far below what a GPU trains at
(DESIGN.md). Trial 50 of a search must not redo trial 1's decoding, so the decoded uint8 pixels
live in one `.npy` file per (dataset fingerprint, stored size, interpolation) under the cache
directory, written atomically, and every later trial memory-maps it.

The fingerprint covers each file's path, size and modification time: re-hashing every byte on
each trial would cost as much as decoding. A changed or added image changes the fingerprint.
Images stored inside parquet or arrow files are fingerprinted by those files the same way.

The file's size is known before anything is decoded, so a dataset that does not fit the cache's
disk budget is refused up front (workers/data/cache_budget.py), never written halfway.
"""

from __future__ import annotations

import fcntl
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from workers.data.cache_budget import check_cache_budget, decoded_bytes, npy_header
from workers.data.digits import default_cache_dir
from workers.data.fingerprint import Images, cache_key, dataset_fingerprint
from workers.data.images import DECODE_ERRORS, decode, decode_error, decode_one, verify_images
from workers.data.index import DatasetError

CHUNK_IMAGES = 256  # decoded per write: bounds the build's memory, whatever the dataset's size


def decoded_path(
    images: Images,
    size: int,
    interpolation: str = "bicubic",
    cache_dir: Path | None = None,
    *,
    fingerprint: str | None = None,
) -> Path:
    """The cache file a trial reads for these images at this size (it may not exist yet);
    `fingerprint` is the images' (`DatasetIndex.fingerprint`) when the caller has it already."""
    folder = (cache_dir or default_cache_dir()) / "decoded"
    fingerprint = fingerprint or dataset_fingerprint(images)
    return folder / f"{cache_key(fingerprint, size, interpolation)}.npy"


def load_decoded(
    images: Images,
    size: int,
    interpolation: str = "bicubic",
    cache_dir: Path | None = None,
    *,
    fingerprint: str | None = None,
) -> np.ndarray:
    """Return an (N, 3, size, size) uint8 array of all images, decoding only on a cache miss."""
    fingerprint = fingerprint or dataset_fingerprint(images)
    target = decoded_path(images, size, interpolation, cache_dir, fingerprint=fingerprint)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Trials starting together on one machine decode once: the others wait on the lock.
        with open(target.parent / f".{target.stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                # under the lock: a sibling trial's half-written file must not count against us
                check_cache_budget(len(images), size, cache_dir)
                _decode_all(images, size, interpolation, target)
                _mark_verified(_verified_marker(fingerprint, cache_dir))  # every image decoded
    return np.load(target, mmap_mode="r")


def verify_once(
    images: Images, cache_dir: Path | None = None, *, fingerprint: str | None = None
) -> None:
    """`verify_images`, skipped when these exact files (paths, sizes, modification times, as the
    decoded cache's key) were verified or decoded on this machine before.

    A job's driver checks every image before its trials start; for a large dataset, reading
    every header again for each job on it is a wait before any trial, for files the cache
    already vouches for (docs/benchmarks.md has the numbers).
    """
    marker = _verified_marker(fingerprint or dataset_fingerprint(images), cache_dir)
    if marker.exists():
        return
    verify_images(images)
    _mark_verified(marker)


def _verified_marker(fingerprint: str, cache_dir: Path | None) -> Path:
    folder = (cache_dir or default_cache_dir()) / "decoded"
    return folder / f"{cache_key(fingerprint, 0, 'verified')}.verified"


def _mark_verified(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


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
        return decode(io.BytesIO(item), size, interpolation, f"{chunk.where[j]}: the image")
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
            np.lib.format.write_array_header_1_0(out, npy_header(len(images), size))
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
