"""Opening images safely and decoding them: the pixel bound checked from the header before
decoding, every image of a dataset verified (headers and structure) before any trial starts, and
one image decoded to the stored square a trial reads."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.data.index import DatasetError

if TYPE_CHECKING:
    from workers.data.tables.images import EncodedImage, StoredImages

INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
MAX_PIXELS_ENV = "AUTOML_MAX_IMAGE_PIXELS"
# 8192 x 8192: eight times the largest img_size (1024) a side. Every image is resized to at
# most about 1,200 px a side; decoding more than this is work (and memory: 200 MB as RGB)
# thrown away, and below PIL's own bomb limit (89 MP warned, 179 MP refused) it is not stopped.
DEFAULT_MAX_PIXELS = 8192 * 8192


def verify_images(images: Sequence[Path] | StoredImages, workers: int = 8) -> None:
    """Check every image parses (PIL's verify: headers and structure, no full decode).

    A job runs this once on its driver before any trial starts: one corrupt file would otherwise
    fail every trial of the search, each after its retries. Images held in parquet/arrow tables
    (`DatasetIndex.images`) are read a batch of rows at a time and named by file and row.
    """
    from concurrent.futures import ThreadPoolExecutor

    if isinstance(images, Sequence):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            bad = [b for b in pool.map(_broken_file, images) if b is not None]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DatasetError(
                f"cannot decode image {'; '.join(bad[:3])}{more}; replace or remove the file(s)"
            )
        return
    rows: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in images.encoded(256):
            rows += [b for b in pool.map(_broken_row, batch) if b is not None]
    if rows:
        more = f"; and {len(rows) - 3} more rows" if len(rows) > 3 else ""
        raise DatasetError(f"{'; '.join(rows[:3])}{more}; replace or remove those rows")


def _broken_file(path: Path) -> str | None:
    error = _unverifiable(path, f"image {path}")
    return None if error is None else f"{path} ({type(error).__name__}: {error})"


def _broken_row(row: EncodedImage) -> str | None:
    import io

    error = _unverifiable(io.BytesIO(row.data), f"{row.where}: the image")
    return None if error is None else f"{row.where}: cannot decode image ({decode_error(error)})"


def _unverifiable(source: Path | BinaryIO, where: str) -> Exception | None:
    """PIL's complaint about an image's header and structure (no full decode), or None; an image
    over the pixel bound raises `DatasetError`."""
    try:
        with Image.open(source) as image:
            bound_pixels(image, 1, where)  # reduced as far as a JPEG goes
            image.verify()
    except DatasetError:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        return error
    return None


def max_image_pixels() -> int:
    """The most pixels one image may decode to: `AUTOML_MAX_IMAGE_PIXELS`, or 8192 x 8192."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise DatasetError(f"{MAX_PIXELS_ENV}={raw[:40]!r} is not a number of pixels; set it to "
                           f"a whole number such as {DEFAULT_MAX_PIXELS}, or unset it")
    return int(raw)


def bound_pixels(image: Image.Image, side: int, where: str) -> None:
    """Refuse an opened image, from its header and before it is decoded, that would decode to
    more pixels than `max_image_pixels()`. A JPEG over the bound is set to decode reduced
    instead (by 2, 4 or 8 a side, PIL's `draft`), its shorter side kept at least `side`, when
    that brings it under; any other image is decoded in full or not at all."""
    bound = max_image_pixels()
    width, height = image.size
    if width * height <= bound:
        return
    scale = side / min(width, height)
    image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))  # JPEG only
    if image.width * image.height > bound:
        raise DatasetError(
            f"{where} has {width}x{height} pixels, over the bound of {bound:,} pixels an image "
            f"({MAX_PIXELS_ENV}; training resizes every image to at most about 1,200 px a "
            f"side): downscale it, or raise {MAX_PIXELS_ENV}"
        )


def decode_error(error: Exception) -> str:
    """PIL's complaint, without the in-memory file object it names for images held as bytes."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL reads"
    return f"{type(error).__name__}: {error}"


def decode_one(path: Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Resize the shorter side to `size`, center-crop a square; (3, size, size) uint8."""
    try:
        return decode(path, size, interpolation, f"image {path}")
    except DatasetError:
        raise
    except DECODE_ERRORS as error:
        raise DatasetError(
            f"cannot decode image {path}: {error}; replace or remove the file"
        ) from error


def decode(source: Path | BinaryIO, size: int, interpolation: str, where: str) -> np.ndarray:
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
