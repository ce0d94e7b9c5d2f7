"""A tiny real model for the evaluation tests: test_resnet trained on the digits at 32 px."""

from __future__ import annotations

from pathlib import Path

from workers.config import TrialConfig
from workers.train.loop import train

TINY = {"backbone": "test_resnet.r160_in1k", "pretrained": False, "img_size": 32,
        "batch_size": 64, "lr": 3e-3, "epochs": 3, "freeze_stages": 0}


def train_tiny(folder: Path) -> Path:
    """The best checkpoint of a 3-epoch trial on builtin:digits (a few seconds on a CPU)."""
    checkpoint = train(TrialConfig.from_dict(TINY), folder).best_checkpoint
    assert checkpoint is not None
    return checkpoint
