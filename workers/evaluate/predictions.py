"""A model's logits over selected images: the decoded-image cache, the eval crop, the trial
engine's device batching, and optionally a corruption of the uint8 crops on the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from workers.data.loaders import CachedImages
from workers.evaluate.dataset import Selection
from workers.predict import LoadedModel
from workers.train.augment import eval_transform
from workers.train.device import Acceleration
from workers.train.evaluation import device_batches
from workers.train.prepared import prepare_data


@dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # (N, classes) float32
    labels: np.ndarray  # (N,) int64, the model's class ids

    def __len__(self) -> int:
        return len(self.labels)

    def probabilities(self, temperature: float = 1.0) -> np.ndarray:
        return torch.from_numpy(self.logits / temperature).softmax(dim=1).numpy()


def decoded_pixels(loaded: LoadedModel, selection: Selection) -> np.ndarray:
    """The selection's dataset decoded at the model's stored size (the shared cache: decoded
    once per machine, memory-mapped after)."""
    return prepare_data(loaded.config, loaded.preprocessing, selection.index).pixels


@torch.inference_mode()
def predict(
    loaded: LoadedModel,
    selection: Selection,
    pixels: np.ndarray,
    corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 128,
) -> Predictions:
    """Logits of every selected image, in the selection's order. `corrupt` takes and returns
    a uint8 NCHW batch of eval crops on the device, before normalization."""
    dataset = CachedImages(
        pixels, selection.labels, selection.indices, eval_transform(loaded.preprocessing.img_size)
    )
    loader = DataLoader(dataset, batch_size=batch_size)  # in order: corruption seeds stay put
    acceleration = Acceleration.for_device(loaded.device, loaded.config)
    model, device = loaded.model.eval(), loaded.device
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    batches = device_batches(loader, device, loaded.preprocessing, acceleration.channels_last,
                             corrupt)
    for images, targets in batches:
        with torch.autocast(device.type, torch.bfloat16, enabled=acceleration.autocast):
            out = model(images)
        logits.append(out.float().cpu().numpy())
        labels.append(targets.cpu().numpy())
    return Predictions(np.concatenate(logits), np.concatenate(labels).astype(np.int64))
