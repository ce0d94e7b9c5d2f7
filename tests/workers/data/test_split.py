"""The stratified, seeded train/val/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.config import DataConfig
from workers.data.index import DatasetError
from workers.data.sources import load_index


def test_split_is_stratified_disjoint_and_seeded() -> None:
    a = load_index(DataConfig(source="builtin:digits", split_seed=1))
    b = load_index(DataConfig(source="builtin:digits", split_seed=1))
    c = load_index(DataConfig(source="builtin:digits", split_seed=2))
    assert all(np.array_equal(a.split_indices[s], b.split_indices[s]) for s in a.split_indices)
    assert not np.array_equal(a.split_indices["val"], c.split_indices["val"])
    together = np.concatenate(list(a.split_indices.values()))
    assert len(np.unique(together)) == len(together) == len(a.paths)
    counts = np.bincount(a.split_labels("val"), minlength=10)
    assert counts.min() >= counts.max() - 1  # every class equally represented


def test_tiny_class_cannot_be_split(color_folder: Path) -> None:
    for extra in list((color_folder / "blue").iterdir())[2:]:
        extra.unlink()
    with pytest.raises(DatasetError, match="class id 0 has 2 image") as caught:
        load_index(DataConfig(source=str(color_folder)))
    assert "blue" not in str(caught.value)  # a class name may be a manifest's content
