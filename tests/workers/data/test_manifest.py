"""CSV manifests, and every mistake in one named by its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.config import DataConfig
from workers.data.index import DatasetError
from workers.data.sources import load_index


def test_csv_manifest(tmp_path: Path, color_folder: Path) -> None:
    rows = ["path,label"] + [
        f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(color_folder.rglob("*.png"))
    ]
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    index = load_index(DataConfig(source=str(manifest)))
    assert index.classes == ("blue", "red")
    assert len(index.paths) == 24
    # as a spreadsheet saves it: a byte-order mark first, a space after each comma
    manifest.write_text("\ufeff" + "\n".join(r.replace(",", ", ") for r in rows) + "\n")
    assert load_index(DataConfig(source=str(manifest))).classes == ("blue", "red")


def test_bad_manifest_names_the_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,x\nb.png,y\n")
    with pytest.raises(DatasetError, match=r"m.csv:2: the image that line names does not exist"):
        load_index(DataConfig(source=str(manifest)))
    # a file that is no manifest: its content is never quoted back (errors travel over HTTP)
    manifest.write_text("SECRET_API_KEY=hunter2,other\na.png,x\n")
    with pytest.raises(DatasetError, match="'path' and 'label' columns") as caught:
        load_index(DataConfig(source=str(manifest)))
    assert "hunter2" not in str(caught.value) and "SECRET" not in str(caught.value)
    for rows, missing in [("a.png,x\nb.png\n", "label"), ("a.png,x\nb.png,\n", "label"),
                          ("a.png,x\n,y\n", "path")]:
        manifest.write_text("path,label\n" + rows)
        with pytest.raises(DatasetError, match=f"m.csv:3: the row has no {missing}"):
            load_index(DataConfig(source=str(manifest)))


def test_a_label_is_never_quoted(tmp_path: Path, color_folder: Path) -> None:
    """A file read as a manifest may be anything: its labels are its content."""
    image = next(color_folder.rglob("*.png"))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{image},SECRET_API_KEY=hunter2\n")
    with pytest.raises(DatasetError, match="has one class; a classifier needs") as caught:
        load_index(DataConfig(source=str(manifest)))
    assert "hunter2" not in str(caught.value) and "SECRET" not in str(caught.value)
