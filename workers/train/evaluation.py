"""Batches onto the device, and a model's metrics over a loader: shared by the training loop's
validation, the test score of the best trial and `automl evaluate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from workers.model.preprocessing import Preprocessing
from workers.train.augment import normalize
from workers.train.device import Acceleration
from workers.train.metrics import Evaluator


def device_batches(
    loader: DataLoader[Any],
    device: torch.device,
    prep: Preprocessing,
    channels_last: bool,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Move uint8 batches to the device, augment them there when the policy runs on the device,
    then normalize there (cheaper than on the CPU)."""
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        images = normalize(images, prep.mean, prep.std)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, targets.to(device, non_blocking=True)


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    prep: Preprocessing,
    num_classes: int,
    prefix: str,
    acceleration: Acceleration,
) -> dict[str, Any]:
    model.eval()
    evaluator = Evaluator(num_classes, device)
    for images, targets in device_batches(loader, device, prep, acceleration.channels_last):
        with torch.autocast(device.type, torch.bfloat16, enabled=acceleration.autocast):
            logits = model(images)
        evaluator.update(logits, targets)
    return evaluator.compute(prefix)
