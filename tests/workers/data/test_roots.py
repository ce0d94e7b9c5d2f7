"""Confinement to the dataset roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.config import DataConfig
from workers.data.index import DatasetError
from workers.data.sources import load_index


def test_under_the_roots_a_manifest_says_nothing_of_what_lies_outside(
    tmp_path: Path, color_folder: Path
) -> None:
    """Each path a manifest names is judged under the service's dataset roots before it is
    looked at: one answer for a file that exists and one that does not. Without roots (the
    embedded `automl run`) the same manifest reads images anywhere its user can."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.png").symlink_to(next(color_folder.rglob("*.png")))
    answers = set()
    manifest = root / "m.csv"
    for named in ("/etc/passwd", "/etc/nope", str(next(color_folder.rglob("*.png"))),
                  "../colors/red/0.png", "link.png"):
        manifest.write_text(f"path,label\n{named},a\n{named},b\n")
        with pytest.raises(DatasetError) as caught:
            load_index(DataConfig(source=str(manifest)), (root,))
        answers.add(str(caught.value))
    assert answers == {f"{manifest}:2: the image that line names resolves outside the dataset "
                       "roots (AUTOML_DATASET_ROOTS); this service reads only under them"}
    rows = [f"{p},{p.parent.name}" for p in sorted(color_folder.rglob("*.png"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    assert len(load_index(DataConfig(source=str(manifest))).paths) == 24
    with pytest.raises(DatasetError, match="resolves outside the dataset roots"):
        load_index(DataConfig(source=str(color_folder)), (root,))
