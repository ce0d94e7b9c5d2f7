"""Augmentation policies (torchvision.transforms.v2) and batch mixing (timm's Mixup).

Transforms work on the cached uint8 CHW tensors and keep them uint8: conversion to float and
normalization with the backbone's mean/std happen on the training device, one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.data import Mixup
from torchvision.transforms import v2

from workers.config import TrialConfig


def train_transform(config: TrialConfig, img_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training policy: `none` is the eval crop; every other policy starts from `basic`."""
    if config.augment == "none":
        return eval_transform(img_size)
    steps: list[Callable[..., torch.Tensor]] = [
        v2.RandomResizedCrop(img_size, scale=(config.crop_min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if config.augment == "randaugment":
        steps.append(v2.RandAugment(num_ops=config.ra_num_ops, magnitude=config.ra_magnitude))
    elif config.augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    elif config.augment == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    return v2.Compose(steps)


def eval_transform(img_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stored square is timm's eval resize, so the center crop completes timm's eval transform."""
    return v2.CenterCrop(img_size)


def batch_mixer(config: TrialConfig, num_classes: int) -> Mixup | None:
    """Mixup/CutMix with label smoothing folded into the soft targets, or None when both are off."""
    if config.mixup_alpha <= 0 and config.cutmix_alpha <= 0:
        return None
    return Mixup(
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        prob=config.mixup_prob,
        label_smoothing=config.label_smoothing,
        num_classes=num_classes,
    )


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 NCHW -> float NCHW normalized, on whatever device the batch is on."""
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255.0
    return (images.float() - mean_t) / std_t
