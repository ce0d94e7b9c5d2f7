"""Which images an evaluation reads, with labels as the model's class ids (matched by name).

The rules (which split by default, how a foreign dataset is split) are the package's
docstring's; this module carries them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.config import DataConfig
from workers.data.index import DatasetIndex, scoring_only
from workers.data.sources import load_index
from workers.errors import UserError
from workers.predict import LoadedModel

SPLIT_CHOICES = ("test", "val", "train", "all")


@dataclass(frozen=True)
class Selection:
    """Images of one dataset to evaluate: `indices` into `index`, and `labels`, the model's
    class id of every image of the index."""

    source: str
    split: str
    index: DatasetIndex
    indices: np.ndarray
    labels: np.ndarray
    own: bool  # the checkpoint's own dataset, split as its job split it

    def __len__(self) -> int:
        return len(self.indices)

    def absent_classes(self, classes: list[str]) -> list[str]:
        """The model's classes with no image among the selected ones."""
        present = set(self.labels[self.indices].tolist())
        return [name for i, name in enumerate(classes) if i not in present]


def select(
    loaded: LoadedModel, source: str | None = None, split: str | None = None,
    index: DatasetIndex | None = None,
) -> Selection:
    """The images `automl evaluate` scores (`source` None: the checkpoint's own dataset);
    `index`: that own dataset as its job indexed it, when the caller has it."""
    if split is not None and split not in SPLIT_CHOICES:
        raise UserError(f"--split {split!r} is not a split; use one of {', '.join(SPLIT_CHOICES)}")
    own = source is None or source == loaded.config.data.source
    if own:
        data = loaded.config.data
    else:
        assert source is not None
        # no fractions: val and test exist only where the data has its own (folders, shards),
        # and a class of one image is no error (nothing is carved out of it)
        data = DataConfig(source=source, val_fraction=0.0, test_fraction=0.0)
    if index is None or not own:
        with scoring_only():
            index = load_index(data)
    if split is None:
        split = "test" if own or len(index.split_indices["test"]) else "all"
    everything = np.arange(len(index), dtype=np.int64)
    indices = everything if split == "all" else index.split_indices[split]
    if len(indices) == 0:
        fix = "; use --split all" if split == "test" else ""
        raise UserError(f"dataset {data.source} has no {split} images{fix}")
    labels = model_labels(index, loaded.classes, data.source)
    return Selection(data.source, split, index, indices, labels, own)


def validation_for(loaded: LoadedModel, evaluated: Selection) -> tuple[Selection | None, str]:
    """The images to fit the temperature on, and a few words saying which (or why none)."""
    if evaluated.own:
        val = _val_of(evaluated)
        if val is None:
            return None, "not fitted: the checkpoint's dataset has no val images"
        same = " (the evaluated images themselves)" if evaluated.split == "val" else ""
        return val, f"the checkpoint's own val split{same}"
    try:
        own = select(loaded, None, "val")
    except UserError:  # its dataset is not here (a pulled model): the evaluated one's val
        val = _val_of(evaluated) if evaluated.split in ("test", "train") else None
        if val is not None:
            return val, f"the val split of {evaluated.source}"
        return None, (
            "not fitted: the checkpoint's own dataset cannot be read here, and "
            f"{evaluated.source} has no val split apart from the evaluated images"
        )
    return own, "the checkpoint's own val split"


def model_labels(index: DatasetIndex, classes: list[str], source: str) -> np.ndarray:
    """Each image's label as the model's class id; a class the model does not know is refused.

    The refusal names the class, unlike a `DatasetError`: `automl evaluate` reads the user's
    own files on their machine, and a job evaluating its own dataset never meets it."""
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in index.classes if name not in lookup]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        known = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise UserError(
            f"{source}: class {unknown[0]!r}{more} is not one of the model's {len(classes)} "
            f"classes ({known}); remove or relabel its images, or evaluate a model trained on it"
        )
    mapping = np.asarray([lookup[name] for name in index.classes], dtype=np.int64)
    return mapping[index.labels]


def _val_of(selection: Selection) -> Selection | None:
    indices = selection.index.split_indices["val"]
    if len(indices) == 0:
        return None
    return Selection(selection.source, "val", selection.index, indices, selection.labels,
                     selection.own)
