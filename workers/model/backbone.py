"""The backbone: any timm model, its pretrained weights, a new head, frozen stages.

Stages are timm's own coarse parameter groups (`model.group_matcher(coarse=True)`, the same
structure timm uses for layer-wise LR decay), so freeze depth means the same thing for a ResNet,
an EfficientNet and a ViT, without per-architecture code.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from typing import Any

import timm
import torch
from timm.models import group_parameters
from timm.utils import freeze

from workers.config import ConfigError, TrialConfig
from workers.model.weights import check_weights_file


@functools.cache
def _all_model_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def check_backbone(name: str) -> None:
    """Refuse an unknown timm name, listing the closest real ones."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, _all_model_names(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"unknown backbone {name!r}: not a timm model name{hint}")


def create_backbone(config: TrialConfig, num_classes: int) -> torch.nn.Module:
    """timm model with a fresh `num_classes` head; weights from the hub, a local file, or none."""
    check_backbone(config.backbone)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": config.drop_rate}
    if isinstance(config.pretrained, str):
        weights = check_weights_file(config.pretrained)
        # timm loads .safetensors directly and .pth with torch.load(weights_only=True),
        # and drops a classifier whose class count differs from ours.
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    else:
        pretrained = config.pretrained
    # Settings only some architectures take: a ViT resamples its position embedding to img_size
    # and has stochastic depth; a ResNet needs neither. Dropped (with a warning) where refused,
    # so one search space can span both families.
    wanted: dict[str, Any] = {"img_size": config.img_size, "drop_path_rate": config.drop_path_rate}
    optional = {k: v for k, v in wanted.items() if v}
    while True:
        try:
            return timm.create_model(config.backbone, pretrained=pretrained, **kwargs, **optional)
        except TypeError as error:
            refused = next((k for k in optional if f"'{k}'" in str(error)), None)
            if refused is None:
                raise
            if refused != "img_size":
                warnings.warn(f"{config.backbone} has no {refused}; ignoring it", stacklevel=2)
            optional.pop(refused)
        except RuntimeError as error:  # torch's load_state_dict: a heading, a line a problem
            lines = str(error).strip().splitlines()
            if not isinstance(config.pretrained, str) or "loading state_dict" not in str(error):
                raise
            first = " ".join(lines[1].split()).rstrip(".")[:300] if len(lines) > 1 else "torch refused them"
            raise ConfigError(
                f"pretrained weights {config.pretrained} do not fit {config.backbone} ({first}); "
                f"give weights saved from {config.backbone}"
            ) from None


def backbone_stages(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names of each backbone stage in forward order; the classifier is excluded."""
    matcher = model.group_matcher(coarse=True)  # type: ignore[operator]
    groups = group_parameters(model, matcher)
    head = _classifier_names(model)
    stages = []
    for _, names in sorted(groups.items()):
        body = [n for n in names if not any(n.startswith(h + ".") for h in head)]
        if body:
            stages.append(body)
    return stages


def freeze_stages(model: torch.nn.Module, depth: int | str) -> int:
    """Freeze the first `depth` stages ('all' = linear probe); returns how many were frozen.

    timm's `freeze` turns the stages' BatchNorm layers into FrozenBatchNorm2d, so frozen stages
    keep their running statistics whatever mode the model is in. Parameters that hang directly off
    a stage rather than off a module (a ViT's cls_token, pos_embed) are frozen by flag.
    """
    stages = backbone_stages(model)
    count = len(stages) if depth == "all" else int(depth)
    if count > len(stages):
        raise ConfigError(
            f"freeze_stages={depth} but {type(model).__name__} has {len(stages)} stages; "
            f"use 0..{len(stages)} or 'all'"
        )
    frozen = {name for stage in stages[:count] for name in stage}
    modules = sorted({name.rpartition(".")[0] for name in frozen if "." in name})
    if modules:
        freeze(model, modules)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return count


def _classifier_names(model: torch.nn.Module) -> list[str]:
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
    names = cfg.get("classifier", "head")
    return [names] if isinstance(names, str) else list(names)
