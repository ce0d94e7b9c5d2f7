"""The optimizer: timm's `create_optimizer_v2` over the trainable parameters."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2

from workers.config import TrialConfig


def create_optimizer(config: TrialConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Frozen parameters are skipped; bias and norm weights get no weight decay (timm's rule)."""
    kwargs: dict[str, Any] = {}
    if config.optimizer == "sgd":
        kwargs = {"momentum": config.momentum, "nesterov": config.nesterov}
    opt = "adam" if config.optimizer == "adam" else config.optimizer
    return create_optimizer_v2(
        model,
        opt=opt,
        lr=config.lr,
        weight_decay=config.weight_decay,
        layer_decay=config.layer_decay,
        **kwargs,
    )
