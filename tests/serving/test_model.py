"""The ONNX model as the server loads it, and its input pipeline against the trial engine's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.errors import ClientError, ModelError
from serving.model import ServedModel, center_crop


def test_metadata(model: ServedModel) -> None:
    assert model.classes == [str(d) for d in range(10)]
    assert model.img_size == 32 and model.resize >= 32
    assert model.input.datatype == "UINT8" and model.input.shape == [-1, 3, 32, 32]
    assert [o.name for o in model.outputs] == ["probabilities", "logits"]


def test_prepare_decodes_as_predict_does(model: ServedModel, images: list[Path]) -> None:
    import torch

    from workers.data.images import decode_one
    from workers.train.augment import eval_transform

    for path in images[:5]:
        crop, width, height = model.prepare(path.read_bytes())
        expected = eval_transform(32)(torch.from_numpy(decode_one(path, model.resize,
                                                                  model.interpolation)))
        assert np.array_equal(crop, expected.numpy())
        assert (width, height) == Image.open(path).size


@pytest.mark.parametrize("side", [36, 37, 38, 45])
def test_center_crop_rounds_as_torchvision(side: int) -> None:
    import torch
    from torchvision.transforms import v2

    square = np.random.default_rng(side).integers(0, 256, (3, side, side + 3), dtype=np.uint8)
    expected = v2.CenterCrop(32)(torch.from_numpy(square)).numpy()
    assert np.array_equal(center_crop(square, 32), expected)


def test_not_an_image_is_the_clients_error(model: ServedModel) -> None:
    with pytest.raises(ClientError, match="cannot decode the image") as caught:
        model.prepare(b"not an image at all")
    assert caught.value.status == 400


def test_too_many_pixels_is_the_clients_error(model: ServedModel,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOML_MAX_IMAGE_PIXELS", "1000")
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, "PNG")
    with pytest.raises(ClientError, match="pixels") as caught:
        model.prepare(buffer.getvalue())
    assert caught.value.status == 413


def test_bad_files_are_model_errors(tmp_path: Path, onnx_file: Path) -> None:
    import onnx

    with pytest.raises(ModelError, match="no model file"):
        ServedModel(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00junk")
    with pytest.raises(ModelError, match="not an ONNX model"):
        ServedModel(junk)
    bare = onnx.load(str(onnx_file))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelError, match="no classes and preprocessing metadata"):
        ServedModel(tmp_path / "bare.onnx")
    onnx.helper.set_model_props(bare, {"classes": "[", "preprocessing": json.dumps({})})
    onnx.save(bare, str(tmp_path / "broken.onnx"))
    with pytest.raises(ModelError, match="unreadable automl metadata"):
        ServedModel(tmp_path / "broken.onnx")
