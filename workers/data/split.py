"""Splitting a dataset's images into train/val/test: stratified by class, from a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.config import DataConfig
from workers.data.index import SPLITS, DatasetError, DatasetIndex


def with_split(
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
