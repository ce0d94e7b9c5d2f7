"""ImageFolder trees: class folders, split folders, and their mistakes."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support import run_cli, write_images
from workers.config import DataConfig
from workers.data.sources import load_index


def test_user_split_folders_are_used_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        write_images(tmp_path / split / "cat", n, (200, 0, 0))
        write_images(tmp_path / split / "dog", n, (0, 0, 200))
    index = load_index(DataConfig(source=str(tmp_path)))
    assert index.classes == ("cat", "dog")
    assert {s: len(i) for s, i in index.split_indices.items()} == {"train": 12, "val": 6, "test": 4}
    assert all("/val/" in str(index.paths[i]) for i in index.split_indices["val"])


def test_empty_class_folder_is_named(color_folder: Path) -> None:
    (color_folder / "green").mkdir()
    code, output = run_cli("--dataset", str(color_folder), "--epochs", "1")
    assert code == 2
    assert "green" in output and "has no images" in output


def test_one_class_dataset_is_refused(color_folder: Path) -> None:
    shutil.rmtree(color_folder / "blue")
    code, output = run_cli("--dataset", str(color_folder), "--epochs", "1")
    assert code == 2
    assert "one class" in output and "at least two" in output
