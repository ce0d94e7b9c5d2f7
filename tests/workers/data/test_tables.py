"""Datasets as people download them: parquet files in the Hugging Face image format, and folders
saved by `datasets.save_to_disk`. Every file here is written by the test itself (pyarrow)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.support import one_colour_png
from workers.config import DataConfig, TrialConfig
from workers.data.decoded_cache import load_decoded
from workers.data.images import verify_images
from workers.data.index import DatasetError
from workers.data.sources import load_index
from workers.predict import evaluate_checkpoint, load_checkpoint
from workers.train.loop import train

COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


def png(color: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.integers(-30, 30, size=(20, 24, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def hub_metadata(names: list[str]) -> dict[bytes, bytes]:
    """The schema metadata the Hub writes: an Image feature and a ClassLabel with its names."""
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def hub_table(labels: list[int], names: list[str], seed: int = 0) -> pa.Table:
    """Rows as the Hub stores an image dataset: {bytes, path} structs and ClassLabel ids."""
    images = [
        {"bytes": png(COLORS[names[label]], seed * 1000 + i), "path": f"{i:05d}.png"}
        for i, label in enumerate(labels)
    ]
    table = pa.table({"image": images, "label": pa.array(labels, pa.int64())})
    return table.replace_schema_metadata(hub_metadata(names))


def alternating(n: int) -> list[int]:
    return [i % 2 for i in range(n)]


def test_a_hub_parquet_file_is_a_dataset(tmp_path: Path) -> None:
    """Class names come from the ClassLabel metadata, in its order (not sorted); each image is
    decoded from its row's bytes, read in batches of rows across small row groups."""
    path = tmp_path / "train.parquet"
    pq.write_table(hub_table(alternating(40), ["red", "blue"]), path, row_group_size=7)
    index = load_index(DataConfig(source=str(path)))
    assert index.classes == ("red", "blue")
    assert len(index) == 40 and index.paths == () and index.files == (path,)
    assert {s: len(i) for s, i in index.split_indices.items()} == {"train": 28, "val": 6, "test": 6}
    verify_images(index.images)
    pixels = load_decoded(index.images, 24).astype(int)
    red, blue = pixels[index.labels == 0], pixels[index.labels == 1]
    assert (red[:, 0].mean() > 150) and (red[:, 2].mean() < 80)
    assert (blue[:, 2].mean() > 150) and (blue[:, 0].mean() < 80)


def test_labels_without_metadata_are_sorted_and_a_path_column_reads_files(tmp_path: Path) -> None:
    """A plain table someone wrote with pandas: a column of paths (relative to the file) and
    string labels; classes are the sorted labels, as an ImageFolder's folders."""
    names, rows = [], []
    for i in range(24):
        name = "red" if i % 2 else "blue"
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / f"{i}.png").write_bytes(png(COLORS[name], i))
        rows.append(f"img/{i}.png")
        names.append(name)
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"file": rows, "species": names}), path)
    index = load_index(DataConfig(source=str(path), image_column="file", label_column="species"))
    assert index.classes == ("blue", "red")
    assert index.paths[3] == tmp_path / "img" / "3.png"
    assert index.classes[index.labels[3]] == "red"
    assert set(index.files) == {path, *index.paths}  # what a service checks against its roots
    (tmp_path / "img" / "5.png").unlink()
    with pytest.raises(DatasetError, match=r"labels.parquet row 5: the image file that row names"):
        load_index(DataConfig(source=str(path), image_column="file"))


def test_integer_labels_without_names_become_classes(tmp_path: Path) -> None:
    table = hub_table(alternating(20), ["red", "blue"]).replace_schema_metadata(None)
    table = table.set_column(1, "label", pa.array([7 if i % 2 else 3 for i in range(20)]))
    pq.write_table(table, tmp_path / "x.parquet")
    index = load_index(DataConfig(source=str(tmp_path / "x.parquet")))
    assert index.classes == ("3", "7") and set(index.labels.tolist()) == {0, 1}


@pytest.mark.parametrize("layout", ["hub names", "split folders"])
def test_split_shards_keep_their_split(tmp_path: Path, layout: str) -> None:
    names = ["red", "blue"]
    shards = {"train": [16, 16], "validation": [6], "test": [4]}
    for split, sizes in shards.items():
        for k, rows in enumerate(sizes):
            if layout == "hub names":
                target = tmp_path / "data" / f"{split}-{k:05d}-of-{len(sizes):05d}.parquet"
            else:
                target = tmp_path / {"validation": "val"}.get(split, split) / f"part-{k}.parquet"
            target.parent.mkdir(exist_ok=True)
            pq.write_table(hub_table(alternating(rows), names, seed=k + len(split)), target)
    index = load_index(DataConfig(source=str(tmp_path)))
    assert {s: len(i) for s, i in index.split_indices.items()} == {"train": 32, "val": 6, "test": 4}
    assert index.stored is not None  # the images stay in their tables
    owner = np.concatenate([[s.split] * s.rows for s in index.stored.shards])
    for split, rows in index.split_indices.items():
        assert set(owner[rows]) == {split}


def test_train_and_test_shards_carve_val_from_train(tmp_path: Path) -> None:
    """CIFAR-10 on the Hub ships train and test only: val comes from train, test stays as given."""
    for split, rows in (("train", 40), ("test", 10)):
        table = hub_table(alternating(rows), ["red", "blue"], seed=rows)
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    index = load_index(DataConfig(source=str(tmp_path), val_fraction=0.25))
    sizes = {s: len(i) for s, i in index.split_indices.items()}
    assert sizes == {"train": 30, "val": 10, "test": 10}
    assert index.stored is not None
    owner = np.concatenate([[s.split] * s.rows for s in index.stored.shards])
    assert set(owner[index.split_indices["test"]]) == {"test"}
    assert set(owner[index.split_indices["val"]]) == {"train"}


def test_a_save_to_disk_folder_is_a_dataset(tmp_path: Path) -> None:
    """A DatasetDict as `datasets.save_to_disk` writes it: arrow stream files per split, with
    state.json and dataset_info.json (the features, so the class names)."""
    names = ["red", "blue"]
    (tmp_path / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    for split, rows in (("train", 24), ("test", 8)):
        folder = tmp_path / split
        folder.mkdir()
        table = hub_table(alternating(rows), names).replace_schema_metadata(None)
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=5)
        features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": split}
        (folder / "state.json").write_text(json.dumps(state))
    index = load_index(DataConfig(source=str(tmp_path), val_fraction=0.25))
    assert index.classes == ("red", "blue")
    assert {s: len(i) for s, i in index.split_indices.items()} == {"train": 18, "val": 6, "test": 8}
    pixels = load_decoded(index.images, 24).astype(int)
    assert pixels[index.labels == 1][:, 2].mean() > 150


def test_a_corrupt_row_is_named_by_file_and_row(tmp_path: Path) -> None:
    table = hub_table(alternating(30), ["red", "blue"])
    images = table.column("image").to_pylist()
    images[17]["bytes"] = b"\x89PNG\r\n\x1a\nthis is not really a png"
    path = tmp_path / "train.parquet"
    pq.write_table(table.set_column(0, "image", pa.array(images, table.schema.field("image").type)),
                   path, row_group_size=8)
    index = load_index(DataConfig(source=str(path)))
    with pytest.raises(DatasetError, match=r"train.parquet row 17: cannot decode image \(") as caught:
        verify_images(index.images)  # on the driver, before any trial
    assert "replace or remove" in str(caught.value) and "BytesIO" not in str(caught.value)
    with pytest.raises(DatasetError, match=r"train.parquet row 17: cannot decode image \("):
        load_decoded(index.images, 24)  # in a trial, had the driver not checked


def test_a_row_over_the_pixel_bound_is_named_by_file_and_row(tmp_path: Path) -> None:
    table = hub_table(alternating(30), ["red", "blue"])
    images = table.column("image").to_pylist()
    images[17]["bytes"] = one_colour_png(8193, 8192)
    path = tmp_path / "train.parquet"
    pq.write_table(table.set_column(0, "image", pa.array(images, table.schema.field("image").type)),
                   path, row_group_size=8)
    index = load_index(DataConfig(source=str(path)))
    refused = r"train.parquet row 17: the image has 8193x8192 pixels, over the bound of 67,108,864"
    with pytest.raises(DatasetError, match=refused):
        verify_images(index.images)
    with pytest.raises(DatasetError, match=refused):
        load_decoded(index.images, 24)


def test_an_empty_file_and_a_one_class_file_are_refused(tmp_path: Path) -> None:
    empty = hub_table([], ["red", "blue"])
    pq.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(DatasetError, match=r"empty\.parquet has no rows"):
        load_index(DataConfig(source=str(tmp_path / "empty.parquet")))
    pq.write_table(hub_table([0] * 12, ["red"]), tmp_path / "one.parquet")
    with pytest.raises(DatasetError, match="one class only; a classifier needs at least two"):
        load_index(DataConfig(source=str(tmp_path / "one.parquet")))


def test_a_classlabel_class_without_rows_is_named(tmp_path: Path) -> None:
    """Half of a label-sorted dataset's shards would silently drop classes."""
    pq.write_table(hub_table(alternating(12), ["red", "blue", "green"]), tmp_path / "x.parquet")
    with pytest.raises(DatasetError, match=r"1 of the ClassLabel's 3 classes have no rows "
                       r"\(ids 2\)") as caught:
        load_index(DataConfig(source=str(tmp_path / "x.parquet")))
    assert "green" not in str(caught.value)  # the metadata's names are the file's content


def test_a_wrong_column_is_named_never_the_files_columns_or_contents(tmp_path: Path) -> None:
    """The file's column names are its content too: counted, not listed (the user's own
    setting is named)."""
    table = hub_table(alternating(12), ["red", "blue"])
    table = table.append_column("caption", pa.array(["SECRET-TOKEN-123"] * 12))
    pq.write_table(table, tmp_path / "x.parquet")
    for settings, setting in (({"image_column": "picture"}, "image_column"),
                              ({"label_column": "class"}, "label_column")):
        with pytest.raises(DatasetError) as caught:
            load_index(DataConfig(source=str(tmp_path / "x.parquet"), **settings))
        message = str(caught.value)
        assert "it has 3 columns" in message and "caption" not in message
        assert f"set dataset.{setting}" in message and "SECRET" not in message
    with pytest.raises(DatasetError, match="'label' holds int64, not images"):
        load_index(DataConfig(source=str(tmp_path / "x.parquet"), image_column="label"))


def test_unnamed_columns_are_guessed_or_asked_for(tmp_path: Path) -> None:
    """No metadata, no usual names: the single binary column holds the images and the single
    integer column the labels; two candidates are a question, not a guess."""
    images = [png(COLORS["red" if i % 2 else "blue"], i) for i in range(12)]
    pq.write_table(pa.table({"jpg": images, "cls": alternating(12)}), tmp_path / "a.parquet")
    assert load_index(DataConfig(source=str(tmp_path / "a.parquet"))).classes == ("0", "1")
    pq.write_table(pa.table({"jpg": images, "png": images, "cls": alternating(12)}),
                   tmp_path / "b.parquet")
    with pytest.raises(DatasetError, match=r"several columns could hold the images \(it has 3 "
                                           r"columns\); set dataset\.image_column"):
        load_index(DataConfig(source=str(tmp_path / "b.parquet")))


def test_column_settings_on_an_image_folder_are_refused(color_folder: Path) -> None:
    with pytest.raises(DatasetError, match="image_column names a column of parquet or arrow files"):
        load_index(DataConfig(source=str(color_folder), image_column="image"))


def test_a_trial_trains_and_evaluates_on_a_parquet_dataset(tmp_path: Path) -> None:
    """builtin:digits written as a Hub parquet file (PNG bytes, ClassLabel names)."""
    digits = load_index(DataConfig(source="builtin:digits"))
    names = [str(d) for d in range(10)]
    rows = [{"bytes": p.read_bytes(), "path": p.name} for p in digits.paths]
    table = pa.table({"image": rows, "label": pa.array(digits.labels, pa.int64())})
    path = tmp_path / "digits" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(table.replace_schema_metadata(hub_metadata(names)), path, row_group_size=500)
    config = TrialConfig.from_dict({
        "backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3, "epochs": 3,
        "augment": "none", "source": str(path.parent),
    })
    summary = train(config, tmp_path / "run")
    assert summary.best_value >= 0.6  # ten classes: chance is 0.1
    assert summary.best_checkpoint is not None
    loaded = load_checkpoint(summary.best_checkpoint)
    assert loaded.classes == names
    test = evaluate_checkpoint(loaded, "test")
    assert test["test_images"] > 200 and test["test_accuracy"] >= 0.5


def test_machines_without_pyarrow_run_other_sources_and_are_told_for_tables(
    color_folder: Path, tmp_path: Path
) -> None:
    """The trial engine's core needs no pyarrow (DESIGN.md): it is imported for tables only."""
    import subprocess
    import sys

    pq.write_table(hub_table(alternating(12), ["red", "blue"]), tmp_path / "x.parquet")
    script = f"""
import sys
sys.modules["pyarrow"] = None  # import pyarrow now fails, as where it is not installed
from workers.config import DataConfig
from workers.data.index import DatasetError
from workers.data.sources import load_index
from workers.data.decoded_cache import load_decoded
index = load_index(DataConfig(source={str(color_folder)!r}))
print(load_decoded(index.images, 24).shape)
try:
    load_index(DataConfig(source={str(tmp_path / "x.parquet")!r}))
except DatasetError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(24, 3, 24, 24)" in result.stdout
    assert "reading one needs pyarrow; install it" in result.stdout


def test_shards_that_disagree_on_a_column_are_named(tmp_path: Path) -> None:
    pq.write_table(hub_table(alternating(12), ["red", "blue"]), tmp_path / "train-0.parquet")
    other = hub_table(alternating(12), ["red", "blue"])
    other = other.set_column(1, "label", pa.array(["red", "blue"] * 6))
    pq.write_table(other, tmp_path / "train-1.parquet")
    with pytest.raises(DatasetError, match=r"train-1\.parquet: column 'label' holds string where"):
        load_index(DataConfig(source=str(tmp_path)))


def test_under_the_roots_a_table_says_nothing_of_what_lies_outside(tmp_path: Path) -> None:
    """A service's roots: every path a table or its state.json names is judged under them
    before it is looked at, so a path to an existing file, a missing one, or one that is
    not a table all get one answer; the embedded reader still follows them."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "real.png").write_bytes(png(COLORS["red"], 0))
    table = hub_table(alternating(12), ["red", "blue"]).replace_schema_metadata(None)
    with pa.OSFile(str(outside / "data.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (root / "link.png").symlink_to(outside / "real.png")
    answers = set()
    for named in ("/etc/passwd", "/etc/nope", str(outside / "real.png"), "../outside/real.png",
                  "link.png"):
        pq.write_table(pa.table({"image": [named] * 12, "label": alternating(12)}),
                       root / "paths.parquet")
        with pytest.raises(DatasetError) as caught:
            load_index(DataConfig(source=str(root / "paths.parquet")), (root,))
        answers.add(str(caught.value))
    assert answers == {f"{root / 'paths.parquet'} row 0: the image file that row names "
                       "resolves outside the dataset roots (AUTOML_DATASET_ROOTS); this service "
                       "reads only under them"}
    saved = root / "saved"
    saved.mkdir()
    answers = set()
    for filename in ("../../outside/data.arrow", "../../outside/nope.arrow", "/etc/passwd"):
        (saved / "state.json").write_text(json.dumps({"_data_files": [{"filename": filename}]}))
        with pytest.raises(DatasetError) as caught:
            load_index(DataConfig(source=str(saved)), (root,))
        answers.add(str(caught.value))
    assert len(answers) == 1 and "state.json: data file 1 resolves outside" in answers.pop()
    (saved / "state.json").write_text(json.dumps({"_data_files": [
        {"filename": "../../outside/data.arrow"}]}))
    assert len(load_index(DataConfig(source=str(saved))).labels) == 12  # no roots: followed
