"""Finding a dataset's images and labels, and splitting them.

Four sources: an ImageFolder tree (one folder per class, or `train/ val/ [test/]` folders each
holding class folders), a CSV manifest with `path,label` columns, `builtin:digits`, and tables
as the Hugging Face hub ships image datasets (parquet shards, `save_to_disk` folders; see
workers/tables.py). Every user mistake found here raises `DatasetError` with the path and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from workers.config import DataConfig
from workers.digits import ensure_digits
from workers.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

    from workers.tables import EncodedImage, StoredImages

SPLITS = ("train", "val", "test")
MAX_PIXELS_ENV = "AUTOML_MAX_IMAGE_PIXELS"
# 8192 x 8192: eight times the largest img_size (1024) a side. Every image is resized to at
# most about 1,200 px a side; decoding more than this is work (and memory: 200 MB as RGB)
# thrown away, and below PIL's own bomb limit (89 MP warned, 179 MP refused) it is not stopped.
DEFAULT_MAX_PIXELS = 8192 * 8192


class DatasetError(UserError, ValueError):
    """The dataset cannot be used as given; the message says what to fix.

    It never quotes what a dataset's files hold (a label, a table's column or class names, a
    path a manifest lists): the error of a job sent over HTTP is read back by whoever sent it,
    who must learn nothing of files they could not read themselves. It says where instead (the
    file or folder, the line or row, the setting) and counts.
    """


# The dataset roots the index being built is confined to (none: any path its user can read)
_ROOTS: ContextVar[tuple[Path, ...]] = ContextVar("dataset_roots", default=())


def is_under(path: str | Path, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, resolved (`..`, symlinks), lies under one of `roots` (resolved). A path
    that cannot be resolved (a symlink loop, a NUL) lies under none."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(resolved.is_relative_to(root) for root in roots)


@contextlib.contextmanager
def confined_to(roots: tuple[Path, ...]) -> Iterator[None]:
    """Index only under `roots` (a service's dataset roots) while in this block."""
    token = _ROOTS.set(tuple(roots))
    try:
        yield
    finally:
        _ROOTS.reset(token)


def confined(path: Path, where: str) -> Path:
    """`path`, once it is known to resolve under the dataset roots (when there are any).

    Called on every path a dataset's files name, and every file or folder indexing looks
    into, before it is tested or opened: everything outside gets this one answer, so an
    error tells neither what is there nor whether it exists. Nor where the roots are: that is
    the operator's setting, and the answer goes to whoever sent the job.
    """
    roots = _ROOTS.get()
    if roots and not is_under(path, roots):
        raise DatasetError(
            f"{where} resolves outside the dataset roots (AUTOML_DATASET_ROOTS); this service "
            "reads only under them"
        )
    return path


@dataclass(frozen=True)
class DatasetIndex:
    """All images of a dataset, their labels, and which split each belongs to.

    An image is a file (`paths`), or a row of a parquet/arrow table holding its encoded bytes
    (`stored`; `paths` is then empty). `images` is whichever of the two the decoder reads.
    """

    classes: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, one per image
    split_indices: dict[str, np.ndarray]  # "train"/"val"/"test" -> indices into the images
    stored: StoredImages | None = None
    tables: tuple[Path, ...] = ()  # the parquet/arrow files a table dataset was indexed from

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> tuple[Path, ...] | StoredImages:
        return self.stored if self.stored is not None else self.paths

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the dataset reads: its image files and its tables."""
        return self.tables + self.paths

    def split_labels(self, split: str) -> np.ndarray:
        return self.labels[self.split_indices[split]]


def load_index(data: DataConfig, roots: tuple[Path, ...] = ()) -> DatasetIndex:
    """Index `data.source` and split it (stratified by seed unless the user gave split folders).

    With `roots` (a service's dataset roots), every path the dataset names or indexing looks
    into must resolve under them (`confined`); without, any path its user can read is read.
    """
    if data.source.startswith("builtin:"):
        roots = ()  # bundled with the engine, in its own cache folder
    with confined_to(roots):
        return _load_index(data)


def _load_index(data: DataConfig) -> DatasetIndex:
    from workers.tables import is_table_source, load_table_index

    source = data.source
    path = Path(source).expanduser()
    if not source.startswith("builtin:"):
        confined(path, "dataset.source")
    if path.exists() and is_table_source(path):
        return load_table_index(path, data)
    if data.image_column is not None or data.label_column is not None:
        setting = "image_column" if data.image_column is not None else "label_column"
        raise DatasetError(
            f"{setting} names a column of parquet or arrow files; {source!r} is not one, so "
            f"remove {setting} (an ImageFolder's labels are its folders, a CSV's its label column)"
        )
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name != "digits":
            raise DatasetError(
                f"unknown builtin dataset {source!r}; the bundled one is builtin:digits"
            )
        root = ensure_digits()
        classes, paths, labels = _scan_class_folders(root)
        return _with_split(classes, paths, labels, data)
    if not path.exists():
        raise DatasetError(
            f"dataset {source!r} does not exist; give an ImageFolder directory, a CSV manifest "
            "(path,label), parquet files, a save_to_disk folder or builtin:digits"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(
                f"dataset file {path} is not a .csv manifest with path,label columns, "
                "nor a .parquet or .arrow table"
            )
        classes, paths, labels = _read_manifest(path)
        return _with_split(classes, paths, labels, data)
    if _is_dir(path / "train") and _is_dir(path / "val"):
        return _user_split(path)
    classes, paths, labels = _scan_class_folders(path)
    return _with_split(classes, paths, labels, data)


def _is_dir(path: Path) -> bool:
    return confined(path, str(path)).is_dir()


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
    from PIL import Image

    try:
        with Image.open(path) as image:
            bound_pixels(image, 1, f"image {path}")  # reduced as far as a JPEG goes
            image.verify()
    except DatasetError:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        return f"{path} ({type(error).__name__}: {error})"
    return None


def _broken_row(row: EncodedImage) -> str | None:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(row.data)) as image:
            bound_pixels(image, 1, f"{row.where}: the image")
            image.verify()
    except DatasetError:
        raise
    except Exception as error:  # PIL raises many types for damaged files
        return f"{row.where}: cannot decode image ({decode_error(error)})"
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
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image format PIL reads"
    return f"{type(error).__name__}: {error}"


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders as the images anywhere under them (sorted): what to predict."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = _images_under(path)
            if not found:
                raise DatasetError(f"{path} has no images ({', '.join(IMG_EXTENSIONS)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DatasetError(f"no such image file or folder: {path}")
    return out


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)


def _scan_class_folders(root: Path) -> tuple[list[str], list[Path], list[int]]:
    folders = sorted(p for p in root.iterdir() if not p.name.startswith(".") and _is_dir(p))
    if not folders:
        raise DatasetError(
            f"{root} has no class folders; put each class's images in its own sub-folder "
            "(root/cat/1.jpg, root/dog/2.jpg)"
        )
    classes, paths, labels = [], [], []
    for label, folder in enumerate(folders):
        images = _images_under(folder)
        if not images:
            raise DatasetError(
                f"class folder {folder} has no images ({', '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        classes.append(folder.name)
        paths.extend(images)
        labels.extend([label] * len(images))
    _require_two_classes(classes, root)
    return classes, paths, labels


def _read_manifest(manifest: Path) -> tuple[list[str], list[Path], list[int]]:
    # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark, which would
    # otherwise become part of the first column's name
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if reader.fieldnames is not None:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            # the file's own first line is not quoted back: error messages travel (a job's
            # error over HTTP) where the file's content must not
            columns = len(reader.fieldnames or [])
            raise DatasetError(
                f"{manifest} must start with a header row naming its 'path' and 'label' "
                f"columns; its first line has {columns} column(s), not both of those"
            )
        rows = [_manifest_row(manifest, reader.line_num, row) for row in reader]
    if not rows:
        raise DatasetError(f"{manifest} lists no images; add path,label rows")
    classes = sorted({label for _, _, label in rows})
    _require_two_classes(classes, manifest)
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for line, raw, label in rows:
        path = Path(raw) if Path(raw).is_absolute() else manifest.parent / raw
        confined(path, f"{manifest}:{line}: the image that line names")
        if not path.is_file():
            raise DatasetError(f"{manifest}:{line}: the image that line names does not exist")
        paths.append(path)
        labels.append(index[label])
    return classes, paths, labels


def _manifest_row(manifest: Path, line: int, row: dict[str, str | None]) -> tuple[int, str, str]:
    """(line, path, label), surrounding spaces dropped: ` cat` and `cat` are one class."""
    raw, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    if not raw or not label:
        missing = "path" if not raw else "label"
        raise DatasetError(
            f"{manifest}:{line}: the row has no {missing}; every row needs path,label"
        )
    return line, raw, label


def _user_split(root: Path) -> DatasetIndex:
    """`train/ val/ [test/]`, each with the same class folders."""
    parts = {
        split: _scan_class_folders(root / split) for split in SPLITS if _is_dir(root / split)
    }
    classes = parts["train"][0]
    for split, (split_classes, _, _) in parts.items():
        if split_classes != classes:
            differ = len(set(split_classes) ^ set(classes))
            raise DatasetError(
                f"{root / split} has {len(split_classes)} class folders and {root / 'train'} "
                f"{len(classes)}, {differ} of them in only one; every split folder needs the "
                "same class folders"
            )
    paths: list[Path] = []
    labels: list[int] = []
    split_indices = {}
    for split, (_, split_paths, split_labels) in parts.items():
        split_indices[split] = np.arange(len(paths), len(paths) + len(split_paths))
        paths.extend(split_paths)
        labels.extend(split_labels)
    split_indices.setdefault("test", np.arange(0))
    return DatasetIndex(tuple(classes), tuple(paths), np.asarray(labels, np.int64), split_indices)


def _with_split(
    classes: list[str], paths: list[Path], labels: list[int], data: DataConfig
) -> DatasetIndex:
    label_array = np.asarray(labels, np.int64)
    split = stratified_split(
        label_array, data.val_fraction, data.test_fraction, data.split_seed, classes
    )
    return DatasetIndex(tuple(classes), tuple(paths), label_array, split)


def stratified_split(
    labels: np.ndarray, val: float, test: float, seed: int, classes: list[str] | None = None
) -> dict[str, np.ndarray]:
    """Per class: shuffle by seed, then carve val and test (at least one each when asked)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = max(1, round(len(members) * test)) if test > 0 else 0
        n_val = max(1, round(len(members) * val)) if val > 0 else 0
        if len(members) - n_val - n_test < 1:
            raise DatasetError(
                f"class id {int(label)} has {len(members)} image(s): too few for train/val/test; "
                f"each class needs at least {n_val + n_test + 1} (ids count from 0 in the order "
                "of the model's outputs)"
            )
        out["test"].extend(members[:n_test])
        out["val"].extend(members[n_test : n_test + n_val])
        out["train"].extend(members[n_test + n_val :])
    return {split: np.sort(np.asarray(idx, np.int64)) for split, idx in out.items()}


def _require_two_classes(classes: list[str], where: Path) -> None:
    if len(classes) < 2:
        raise DatasetError(
            f"{where} has one class; a classifier needs at least two class folders (or labels)"
            if classes
            else f"{where} has no classes"
        )
