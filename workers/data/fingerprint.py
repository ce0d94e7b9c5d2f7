"""A dataset's identity for the decoded cache: each file's path, size and modification time.

Re-hashing every byte would cost as much as decoding; a stat per file is enough to see a changed
or added image. Images stored inside parquet or arrow files are fingerprinted by those files the
same way. The stat of every file is the expensive part, so it is taken once per dataset index
(`DatasetIndex.fingerprint`) and every stored size and resampling derives its key from it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from workers.data.tables.images import StoredImages

Images: TypeAlias = "Sequence[Path] | StoredImages"  # image files, or images held in tables


def dataset_fingerprint(images: Images) -> str:
    """One `os.stat` per file (one realpath per folder: 100,000 files in 100 folders cost 100)."""
    digest = hashlib.sha256(b"v3")  # v3: the files' digest apart from the stored size
    if isinstance(images, Sequence):
        files: Sequence[Path] = images
    else:
        files = images.files()
        digest.update(f"table:{images.column}:{len(images)}\n".encode())
    real_dirs: dict[str, str] = {}
    for path in files:
        text = os.fspath(path)
        parent, _, name = text.rpartition(os.sep)
        real = real_dirs.get(parent)
        if real is None:
            real = real_dirs[parent] = os.path.realpath(parent or ".")
        stat = os.stat(text)
        digest.update(f"{real}{os.sep}{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(fingerprint: str, size: int, interpolation: str) -> str:
    """The decoded file's name for a dataset at one stored side and resampling (v2: 16-bit
    images scaled)."""
    return hashlib.sha256(f"v2:{size}:{interpolation}:{fingerprint}".encode()).hexdigest()[:32]
