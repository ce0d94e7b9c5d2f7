"""The worst errors of a real checkpoint are its most confidently wrong images, and each
heatmap says where a real timm model (a CNN, a ViT) looked: a map over the crop in [0, 1]."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from workers.config import TrialConfig
from workers.evaluate.attribution import GRAD_CAM, SALIENCY, attribute
from workers.evaluate.dataset import select
from workers.evaluate.predictions import Predictions, decoded_pixels, predict
from workers.evaluate.worst import OVERLAY_PX, crops, worst_errors
from workers.model.backbone import create_backbone
from workers.predict import LoadedModel, load_checkpoint
from workers.train.augment import normalize

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def evaluated(checkpoint: Path) -> tuple[LoadedModel, object, np.ndarray, Predictions]:
    loaded = load_checkpoint(checkpoint, CPU)
    selection = select(loaded)
    pixels = decoded_pixels(loaded, selection)
    return loaded, selection, pixels, predict(loaded, selection, pixels)


def assert_heatmaps(heat: np.ndarray, n: int, size: int) -> None:
    assert heat.shape == (n, size, size) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    for one in heat:
        assert one.max() - one.min() > 0.1  # a map, not one flat value


def test_the_worst_errors_are_the_most_confidently_wrong(evaluated: tuple) -> None:
    loaded, selection, pixels, clean = evaluated
    probs = clean.probabilities()
    wrong = probs.argmax(1) != clean.labels
    assert 5 < wrong.sum() < len(clean)  # the checks below mean something
    errors = worst_errors(loaded, selection, pixels, clean, k=5)
    assert len(errors) == 5
    assert all(e.true != e.predicted for e in errors)
    confidences = [e.confidence for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    shown = {e.index for e in errors}
    others = [probs[i].max() for i in np.flatnonzero(wrong)
              if int(selection.indices[i]) not in shown]
    assert max(others) <= confidences[-1]  # none left out was wrong more confidently
    position = {int(d): i for i, d in enumerate(selection.indices)}
    for e in errors:
        row = position[e.index]
        assert loaded.classes[int(clean.labels[row])] == e.true
        assert e.confidence == pytest.approx(float(probs[row].max()))
        assert e.path == str(selection.index.paths[e.index])  # the file as the index has it
        assert e.method.startswith(SALIENCY) and "1x1" in e.method  # a ResNet at 32 px
        png = Image.open(io.BytesIO(base64.b64decode(e.overlay_png)))
        assert png.format == "PNG" and min(png.size) >= OVERLAY_PX
    assert worst_errors(loaded, selection, pixels, clean, k=0) == []
    assert len(worst_errors(loaded, selection, pixels, clean, k=10_000)) == wrong.sum()


def test_the_heatmaps_of_the_checkpoints_worst_errors(evaluated: tuple) -> None:
    loaded, selection, pixels, clean = evaluated
    errors = worst_errors(loaded, selection, pixels, clean, k=4)
    images = normalize(crops(loaded, pixels, np.array([e.index for e in errors])),
                       loaded.preprocessing.mean, loaded.preprocessing.std)
    predicted = torch.tensor([loaded.classes.index(e.predicted) for e in errors])
    with torch.inference_mode():  # as the report runs it: gradients are switched on inside
        attribution = attribute(loaded.model, images, predicted)
    assert attribution.method == errors[0].method
    assert_heatmaps(attribution.heatmaps, 4, loaded.preprocessing.img_size)


def test_grad_cam_on_a_cnns_final_feature_map() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=10).eval()
    images = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        before = model(images)
    predicted = before.argmax(1)
    attribution = attribute(model, images, predicted)
    assert attribution.method == f"{GRAD_CAM} (final feature map, 5x5)"
    assert_heatmaps(attribution.heatmaps, 3, 160)
    assert "forward_features" not in vars(model)  # the model is as it was
    with torch.no_grad():
        assert torch.equal(model(images), before)


@pytest.mark.parametrize(("pool", "where"), [
    ("token", "patch tokens entering the last block"),  # the head reads the class token only
    ("avg", "final patch tokens"),
])
def test_grad_cam_on_a_vits_token_grid(pool: str, where: str) -> None:
    torch.manual_seed(0)
    if pool == "token":  # as the project builds it: timm's img_size resamples the positions
        config = TrialConfig.from_dict({"backbone": "test_vit.r160_in1k", "pretrained": False,
                                        "img_size": 32})
        model = create_backbone(config, 10).eval()
    else:
        model = timm.create_model("test_vit.r160_in1k", pretrained=False, num_classes=10,
                                  img_size=32, global_pool="avg").eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
    attribution = attribute(model, images, before.argmax(1))
    assert attribution.method == f"{GRAD_CAM} ({where}, 2x2)"
    assert_heatmaps(attribution.heatmaps, 3, 32)
    assert not model.blocks[-1]._forward_pre_hooks  # the model is as it was
    with torch.no_grad():
        assert torch.equal(model(images), before)
