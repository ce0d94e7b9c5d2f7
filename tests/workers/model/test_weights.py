"""Local pretrained weights files: loaded, or refused with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from workers.config import ConfigError, TrialConfig
from workers.model.backbone import create_backbone
from workers.train.loop import train


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_weights_are_loaded(tmp_path: Path, suffix: str) -> None:
    """A weights file the test writes itself (1000-class head, as from ImageNet)."""
    torch.manual_seed(123)
    source = timm.create_model("test_resnet", num_classes=1000)
    weights = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(source.state_dict(), str(weights))
    else:
        torch.save(source.state_dict(), weights)
    config = TrialConfig(backbone="test_resnet", pretrained=str(weights))
    model = create_backbone(config, num_classes=10)
    stem = next(iter(source.state_dict()))
    assert torch.equal(model.state_dict()[stem], source.state_dict()[stem])
    assert model.get_classifier().out_features == 10  # new head for our classes
    config = TrialConfig.from_dict(
        {"backbone": "test_resnet", "pretrained": str(weights), "img_size": 32, "epochs": 1}
    )
    assert train(config, tmp_path / "run").epochs_run == 1


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone(TrialConfig(pretrained=str(tmp_path / "nope.pth")), 10)


def test_weights_that_do_not_fit_the_backbone_are_a_user_error(tmp_path: Path) -> None:
    """What a user gave (weights of another model) is theirs to fix: one line naming the file
    and the first parameter that differs, not torch's list of every one."""
    state = timm.create_model("test_resnet").state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3)
    weights = tmp_path / "misfit.safetensors"
    safetensors.torch.save_file(state, str(weights))
    with pytest.raises(ConfigError) as refused:
        create_backbone(TrialConfig(backbone="test_resnet", pretrained=str(weights)), 10)
    assert str(refused.value) == (
        f"pretrained weights {weights} do not fit test_resnet (size mismatch for conv1.0.weight: "
        "copying a param with shape torch.Size([3, 3]) from checkpoint, the shape in current "
        "model is torch.Size([16, 3, 3, 3])); give weights saved from test_resnet")
