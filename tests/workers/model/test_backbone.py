"""Backbones: one search space across timm's families."""

from __future__ import annotations

import pytest
import torch

from workers.config import TrialConfig
from workers.model.backbone import create_backbone


def test_one_space_spans_vits_and_convnets() -> None:
    """img_size resizes a ViT's position embedding; a DLA without stochastic depth ignores it."""
    vit = create_backbone(TrialConfig(backbone="vit_tiny_patch16_224", img_size=64), 10)
    assert vit.pos_embed.shape[1] == (64 // 16) ** 2 + 1
    assert vit(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    with pytest.warns(UserWarning, match="dla46x_c has no drop_path_rate"):
        dla = create_backbone(TrialConfig(backbone="dla46x_c", drop_path_rate=0.1), 10)
    assert dla(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
