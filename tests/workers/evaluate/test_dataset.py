"""Which images an evaluation reads: the job's own test split by default, any other dataset
matched to the model's classes by name, and one clear error for a class the model lacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.config import DataConfig, TrialConfig
from workers.data.digits import ensure_digits
from workers.data.sources import load_index
from workers.errors import UserError
from workers.evaluate.dataset import select, validation_for
from workers.model.preprocessing import Preprocessing
from workers.predict import LoadedModel

DIGITS = [str(d) for d in range(10)]


def stand_in(source: str = "builtin:digits") -> LoadedModel:
    """What selection reads of a loaded model: its classes and its dataset settings."""
    config = TrialConfig.from_dict({"backbone": "test_resnet", "source": source})
    prep = Preprocessing(32, 0.875, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return LoadedModel(torch.nn.Identity(), config, DIGITS, prep, torch.device("cpu"))


def digits_folder(root: Path, classes: list[str], per_class: int = 6, start: int = 0) -> Path:
    """An ImageFolder of some digit classes, copied from the bundled digits."""
    source = ensure_digits()
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for image in sorted((source / name).iterdir())[start : start + per_class]:
            shutil.copy(image, root / name / image.name)
    return root


def test_the_checkpoints_own_dataset_is_read_split_as_its_job_split_it() -> None:
    loaded = stand_in()
    selection = select(loaded)
    index = load_index(loaded.config.data)
    assert selection.own and selection.split == "test"
    np.testing.assert_array_equal(selection.indices, index.split_indices["test"])
    np.testing.assert_array_equal(selection.labels, index.labels)  # same classes, same order
    assert selection.absent_classes(DIGITS) == []
    assert len(select(loaded, None, "all")) == len(index)
    val, said = validation_for(loaded, selection)
    assert val is not None and said == "the checkpoint's own val split"
    np.testing.assert_array_equal(val.indices, index.split_indices["val"])


def test_another_dataset_is_matched_by_class_name_and_read_whole(tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "new", ["7", "3", "1"])  # folders sort as 1, 3, 7
    loaded = stand_in()
    selection = select(loaded, str(root))
    assert not selection.own and selection.split == "all" and len(selection) == 18
    index = selection.index
    for i in selection.indices:
        assert DIGITS[selection.labels[i]] == index.paths[i].parent.name
    absent = selection.absent_classes(DIGITS)
    assert absent == [d for d in DIGITS if d not in ("1", "3", "7")]
    val, said = validation_for(loaded, selection)  # the model's own val split, here readable
    assert val is not None and val.own and said == "the checkpoint's own val split"
    with pytest.raises(UserError, match=r"has no test images; use --split all"):
        select(loaded, str(root), "test")
    with pytest.raises(UserError, match=r"has no val images"):  # nothing carved out of it
        select(loaded, str(root), "val")
    digits_folder(tmp_path / "one", ["4"], per_class=1)
    digits_folder(tmp_path / "one", ["5"], per_class=3)
    assert len(select(loaded, str(tmp_path / "one"))) == 4  # a class of one image is fine
    # new photos of one class only: scored, where a job would refuse to train on them
    only = digits_folder(tmp_path / "only", ["6"], per_class=3)
    selection = select(loaded, str(only))
    assert len(selection) == 3 and set(selection.labels.tolist()) == {DIGITS.index("6")}
    with pytest.raises(UserError, match="has one class; a classifier needs at least two"):
        load_index(DataConfig(source=str(only)))


def test_a_csv_manifest_is_matched_by_class_name(tmp_path: Path) -> None:
    images = digits_folder(tmp_path / "images", ["5", "9"], per_class=4)
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(images.rglob("*.png"))]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    selection = select(stand_in(), str(tmp_path / "labels.csv"))
    assert selection.split == "all" and len(selection) == 8
    assert sorted(selection.labels[selection.indices].tolist()) == [5] * 4 + [9] * 4
    assert validation_for(stand_in(), select(stand_in(), None, "val"))[1] == (
        "the checkpoint's own val split (the evaluated images themselves)")


def test_a_dataset_with_its_own_split_folders_is_evaluated_on_its_test_folder(
    tmp_path: Path,
) -> None:
    root = tmp_path / "splits"
    for k, split in enumerate(("train", "val", "test")):
        digits_folder(root / split, ["0", "1", "2"], per_class=4, start=4 * k)
    loaded = stand_in(source=str(tmp_path / "gone"))  # its own dataset is not here
    selection = select(loaded, str(root))
    assert selection.split == "test" and len(selection) == 12
    assert {selection.index.paths[i].parts[-3] for i in selection.indices} == {"test"}
    val, said = validation_for(loaded, selection)
    assert val is not None and said == f"the val split of {root}"
    assert {val.index.paths[i].parts[-3] for i in val.indices} == {"val"}
    everything = select(loaded, str(root), "all")
    assert validation_for(loaded, everything)[0] is None
    assert "not fitted" in validation_for(loaded, everything)[1]


def test_a_class_the_model_does_not_know_is_one_clear_error(tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "new", ["1", "2"])
    shutil.copytree(root / "2", root / "cat")
    with pytest.raises(UserError) as caught:
        select(stand_in(), str(root))
    message = str(caught.value)
    assert "\n" not in message
    assert "class 'cat' is not one of the model's 10 classes (0, 1, 2" in message
    assert "remove or relabel its images" in message


def test_refusals_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no class folders"):
        select(stand_in(), str(tmp_path / "empty"))
    with pytest.raises(UserError, match="--split 'tests' is not a split"):
        select(stand_in(), None, "tests")
    with pytest.raises(UserError, match="does not exist"):
        select(stand_in(), str(tmp_path / "missing"))
