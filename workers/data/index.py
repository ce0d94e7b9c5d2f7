"""The dataset index: every image of a dataset, its label and its split, and the error a dataset
the user gave cannot be used raises."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workers.errors import UserError

if TYPE_CHECKING:
    from workers.data.tables.images import StoredImages

SPLITS = ("train", "val", "test")

# set while indexing images to score rather than to train on (`scoring_only`)
_ONE_CLASS_ALLOWED: ContextVar[bool] = ContextVar("one_class_allowed", default=False)


class DatasetError(UserError, ValueError):
    """The dataset cannot be used as given; the message says what to fix.

    It never quotes what a dataset's files hold (a label, a table's column or class names, a
    path a manifest lists): the error of a job sent over HTTP is read back by whoever sent it,
    who must learn nothing of files they could not read themselves. It says where instead (the
    file or folder, the line or row, the setting) and counts.
    """


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

    @functools.cached_property
    def fingerprint(self) -> str:
        """The images' identity (each file's path, size and modification time): one `os.stat`
        per file, taken once per index and carried with it (a trial handed the driver's index
        through Ray's object store reuses the driver's)."""
        from workers.data.fingerprint import dataset_fingerprint

        return dataset_fingerprint(self.images)


def require_two_classes(
    classes: list[str],
    where: Path,
    one: str = "has one class",
    kinds: str = "class folders (or labels)",
) -> None:
    """A classifier needs two classes: `where` names the dataset, `one` and `kinds` say it in the
    source's own terms (class folders, a table's rows). Images indexed to be scored
    (`scoring_only`) may all be of one class."""
    if len(classes) < 2 and not (classes and _ONE_CLASS_ALLOWED.get()):
        raise DatasetError(
            f"{where} {one}; a classifier needs at least two {kinds}"
            if classes
            else f"{where} has no classes"
        )


@contextlib.contextmanager
def scoring_only() -> Iterator[None]:
    """Index for scoring a trained model while in this block: a dataset of one class is fine
    there (new photos of one kind), where training needs two."""
    token = _ONE_CLASS_ALLOWED.set(True)
    try:
        yield
    finally:
        _ONE_CLASS_ALLOWED.reset(token)
