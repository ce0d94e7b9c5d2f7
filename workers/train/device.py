"""Which device a trial runs on, and how it uses it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from workers.config import TrialConfig


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Acceleration:
    """How a trial uses its device: what timm's own training benchmark does on a GPU.

    On a GPU that is bf16 autocast and channels-last memory, pinned host memory, loader workers
    that feed batches ahead of the model, and the augmentation policy run on the device
    (workers/train/device_augment.py): the CPU policies manage a few hundred images/s per core, and a
    GPU trains thousands. On a CPU none of it pays (the model wants every core, and cached images
    need no decoding), so `for_device` turns it off there. Tests turn it on there instead, to run
    the GPU code path on machines that have no GPU, like CI.
    """

    autocast: bool = False
    channels_last: bool = False
    pin_memory: bool = False
    loader_workers: int = 0
    augment_on_device: bool = False

    @classmethod
    def for_device(cls, device: torch.device, config: TrialConfig) -> Acceleration:
        if device.type != "cuda":
            return cls(loader_workers=config.num_workers or 0)
        workers = config.num_workers
        if workers is None:
            workers = min(8, max(1, len(os.sched_getaffinity(0)) - 1))
        return cls(
            autocast=config.amp,
            channels_last=True,
            pin_memory=True,
            loader_workers=workers,
            augment_on_device=True,
        )
