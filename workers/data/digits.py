"""`builtin:digits`: scikit-learn's bundled 8x8 digits, written once as a real PNG ImageFolder.

The images go through exactly the code path a user's ImageFolder does (PNG files on disk, decode,
resize), so the bundled dataset exercises the real pipeline and needs no download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_SIZE = 32  # upscaled from 8x8 so that small CNNs have room for their strides


def default_cache_dir() -> Path:
    return Path(os.environ.get("AUTOML_CACHE_DIR", Path.home() / ".cache" / "automl"))


def ensure_digits(cache_dir: Path | None = None) -> Path:
    """Return the digits ImageFolder root, writing it atomically on first use."""
    root = (cache_dir or default_cache_dir()) / "datasets" / f"digits-{DIGITS_SIZE}px"
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    _write_digits(staging)
    (staging / ".complete").touch()
    try:
        staging.rename(root)
    except OSError:  # another process finished first: theirs is identical
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _write_digits(root: Path) -> None:
    from sklearn.datasets import load_digits  # reads the copy bundled inside scikit-learn

    bunch = load_digits()
    images = (np.asarray(bunch.images) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for index, (pixels, label) in enumerate(zip(images, bunch.target, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(exist_ok=True)
        image = Image.fromarray(pixels, mode="L").resize(
            (DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR
        )
        image.convert("RGB").save(folder / f"{index:04d}.png")
