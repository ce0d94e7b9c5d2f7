"""What `automl serve-model NAME_OR_FOLDER` resolves to."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.errors import ModelError
from serving.resolve import read_batching, resolve

CONFIG = """name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "image" data_type: TYPE_UINT8 dims: [3, 32, 32] } ]
dynamic_batching {
  max_queue_delay_microseconds: 2500
}
"""


@pytest.fixture
def repository(tmp_path: Path, onnx_file: Path) -> Path:
    model = tmp_path / "models" / "digits"
    for version in (1, 2):
        (model / str(version)).mkdir(parents=True)
        shutil.copy(onnx_file, model / str(version) / "model.onnx")
    (model / "config.pbtxt").write_text(CONFIG)
    return tmp_path / "models"


def test_a_name_in_the_repository_is_its_latest_version(repository: Path) -> None:
    found = resolve("digits", repository)
    assert (found.name, found.version, found.max_batch, found.max_wait_ms) == (
        "digits", "2", 16, 2.5)
    assert found.path == (repository / "digits" / "2" / "model.onnx").resolve()


def test_folders(repository: Path, tmp_path: Path, onnx_file: Path) -> None:
    assert resolve(str(repository / "digits"), tmp_path).version == "2"
    version = resolve(str(repository / "digits" / "1"), tmp_path, name="other")
    assert (version.name, version.version, version.max_batch) == ("other", "1", 16)
    loose = tmp_path / "pulled"
    loose.mkdir()
    shutil.copy(onnx_file, loose / "model.onnx")
    found = resolve(str(loose), repository)
    assert (found.name, found.version, found.max_batch, found.max_wait_ms) == (
        "pulled", "1", None, None)
    assert resolve(str(loose / "model.onnx"), repository).name == "pulled"


def test_bad_targets(repository: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no folder nope and no model named 'nope'"):
        resolve("nope", repository)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"holds no model\.onnx"):
        resolve(str(tmp_path / "empty"), repository)
    (repository / "hollow").mkdir()
    with pytest.raises(ModelError, match="has no version"):
        resolve("hollow", repository)
    with pytest.raises(ModelError, match="cannot be a served model's name"):
        resolve("digits", repository, name="a/b")


def test_batching_fields(tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text('name: "m"\nmax_batch_size: 0\n')
    assert read_batching(config) == (None, None)
