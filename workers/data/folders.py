"""ImageFolder trees: one folder per class, or `train/ val/ [test/]` folders each holding the
same class folders; and the image files a prediction is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from workers.data.index import SPLITS, DatasetError, DatasetIndex, require_two_classes
from workers.data.roots import is_dir


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


def scan_class_folders(root: Path) -> tuple[list[str], list[Path], list[int]]:
    folders = sorted(p for p in root.iterdir() if not p.name.startswith(".") and is_dir(p))
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
    require_two_classes(classes, root)
    return classes, paths, labels


def user_split(root: Path) -> DatasetIndex:
    """`train/ val/ [test/]`, each with the same class folders."""
    parts = {
        split: scan_class_folders(root / split) for split in SPLITS if is_dir(root / split)
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
