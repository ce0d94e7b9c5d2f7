"""A backbone's preprocessing, looked up by name once, is what timm resolves for the created
model: the trial, the preflight's cache sizes and the search space's default side agree."""

from __future__ import annotations

import pytest
import timm

from workers.model.preprocessing import data_config, default_side, preprocessing, stored_size


@pytest.mark.parametrize("backbone", ["test_resnet.r160_in1k", "test_vit", "resnet10t",
                                      "efficientnet_b0", "convnext_atto"])
def test_the_name_lookup_is_what_timm_resolves_for_the_model(backbone: str) -> None:
    model = timm.create_model(backbone, pretrained=False)
    resolved = timm.data.resolve_data_config({}, model=model)
    prep = preprocessing(backbone, None)
    assert prep.img_size == resolved["input_size"][-1] == default_side(backbone)
    assert prep.crop_pct == pytest.approx(resolved["crop_pct"])
    assert prep.interpolation == resolved["interpolation"]
    assert prep.mean == pytest.approx(resolved["mean"]) and prep.std == pytest.approx(resolved["std"])


def test_a_backbone_is_looked_up_once_per_process() -> None:
    """Counted by the lookup's own cache: every later question is a hit."""
    data_config.cache_clear()
    for size in (None, 64, 96):
        preprocessing("resnet10t", size)
    default_side("resnet10t")
    info = data_config.cache_info()
    assert (info.misses, info.hits) == (1, 3)


def test_the_stored_square_is_timms_eval_resize() -> None:
    assert stored_size(224, 0.875) == 256 and stored_size(32, 0.95) == 33
