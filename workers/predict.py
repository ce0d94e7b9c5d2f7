"""Using a finished checkpoint: load it, predict images, evaluate it on a split.

Loading rebuilds the timm model from config.json (no pretrained download), freezes the same
stages (so FrozenBatchNorm2d layers line up), and reads safetensors weights: no pickle anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from workers.config import TrialConfig
from workers.data.images import decode_one
from workers.data.index import DatasetError, DatasetIndex
from workers.data.loaders import CachedImages
from workers.data.sources import load_index
from workers.model import checkpoint as ckpt
from workers.model.backbone import create_backbone, freeze_stages
from workers.model.preprocessing import Preprocessing, stored_size
from workers.train.augment import eval_transform, normalize
from workers.train.device import Acceleration, pick_device
from workers.train.evaluation import evaluate_model
from workers.train.prepared import prepare_data


@dataclass
class LoadedModel:
    model: torch.nn.Module
    config: TrialConfig
    classes: list[str]
    preprocessing: Preprocessing
    device: torch.device
    # the published model's calibration (its job's evaluation fitted it on val): logits / T
    temperature: float | None = None


@dataclass(frozen=True)
class Prediction:
    path: Path
    label: str
    probability: float
    probabilities: dict[str, float]


def load_checkpoint(path: Path, device: torch.device | None = None) -> LoadedModel:
    """A trial's checkpoint, or a model folder `automl pull` wrote (timm's layout)."""
    saved = ckpt.read_info(path)
    config = TrialConfig.from_dict(saved["trial"]).replace(pretrained=False)
    classes = list(saved["classes"])
    model = create_backbone(config, len(classes))
    freeze_stages(model, saved["frozen_stages"])
    ckpt.load_weights(model, path)
    device = device or pick_device()
    model.to(device).eval()
    return LoadedModel(
        model, config, classes, Preprocessing.from_dict(saved["preprocessing"]), device,
        saved.get("temperature"),
    )


@torch.inference_mode()
def predict_images(
    loaded: LoadedModel, paths: Sequence[Path], batch_size: int = 64, calibrated: bool = True
) -> list[Prediction]:
    """Exactly the evaluation pipeline: decode, resize to the stored size, center crop, normalize.
    `calibrated`: probabilities at the model's temperature when it has one (the labels are the
    same either way)."""
    temperature = (loaded.temperature or 1.0) if calibrated else 1.0
    prep = loaded.preprocessing
    size = stored_size(prep.img_size, prep.crop_pct)
    crop = eval_transform(prep.img_size)
    out: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        images = torch.stack(
            [crop(torch.from_numpy(decode_one(p, size, prep.interpolation))) for p in chunk]
        )
        batch = normalize(images.to(loaded.device), prep.mean, prep.std)
        probs = (loaded.model(batch).float() / temperature).softmax(dim=1).cpu().numpy()
        out.extend(_prediction(p, row, loaded.classes) for p, row in zip(chunk, probs, strict=True))
    return out


def evaluate_checkpoint(
    loaded: LoadedModel,
    split: str = "test",
    batch_size: int = 128,
    *,
    index: DatasetIndex | None = None,
) -> dict[str, Any]:
    """Metrics of the checkpoint on one split of its own dataset (the test split, once, at the
    end); `index` is that dataset's when the caller has it."""
    index = index if index is not None else load_index(loaded.config.data)
    indices = index.split_indices[split]
    if len(indices) == 0:
        raise DatasetError(f"the dataset has no {split} split to evaluate on")
    data = prepare_data(loaded.config, loaded.preprocessing, index)
    dataset = CachedImages(
        data.pixels, index.labels, indices, eval_transform(loaded.preprocessing.img_size)
    )
    loader = DataLoader(dataset, batch_size=batch_size)
    metrics = evaluate_model(
        loaded.model,
        loader,
        loaded.device,
        loaded.preprocessing,
        len(loaded.classes),
        split,
        Acceleration.for_device(loaded.device, loaded.config),
    )
    metrics[f"{split}_images"] = len(indices)
    return metrics


def _prediction(path: Path, probs: np.ndarray, classes: list[str]) -> Prediction:
    best = int(probs.argmax())
    return Prediction(
        path=path,
        label=classes[best],
        probability=float(probs[best]),
        probabilities={name: float(p) for name, p in zip(classes, probs, strict=True)},
    )
