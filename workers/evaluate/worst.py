"""The worst errors: the images the model got wrong most confidently, each with a heatmap of
where it looked for the class it wrongly chose (workers/evaluate/attribution.py).

Chosen from the clean predictions already made (the wrong ones, by the wrong class's softmax
confidence, descending); the model runs again on those K images only, with gradients. Each
comes with its overlay, the eval crop with the heatmap blended in and upscaled (nearest) to at
least OVERLAY_PX, as a base64 PNG: K small images, the only pixels a report holds.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from workers.evaluate.attribution import attribute
from workers.evaluate.dataset import Selection
from workers.evaluate.predictions import Predictions
from workers.predict import LoadedModel
from workers.train.augment import eval_transform, normalize

DEFAULT_K = 12
OVERLAY_PX = 96  # the overlay's shorter side at least: a 32-px crop is seen
BLEND = 0.6  # the heatmap's weight in the overlay where it is hottest (0 where cold)


@dataclass(frozen=True)
class WorstError:
    index: int  # the image's index in the dataset
    path: str | None  # its file as the dataset index has it; None for builtin or table sources
    true: str
    predicted: str
    confidence: float  # softmax probability of `predicted`
    method: str  # the attribution, as attribution.attribute names it
    overlay_png: str  # base64 PNG: the eval crop with the heatmap blended in


def worst_errors(loaded: LoadedModel, selection: Selection, pixels: np.ndarray,
                 clean: Predictions, k: int = DEFAULT_K) -> list[WorstError]:
    """The at most `k` most confidently wrong of the selected images (`clean`: their
    predictions, in the selection's order), most confident first."""
    if k <= 0 or len(clean) == 0:
        return []
    probs = clean.probabilities()
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(predicted != clean.labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    if len(chosen) == 0:
        return []
    dataset_indices = selection.indices[chosen]
    uint8 = crops(loaded, pixels, dataset_indices)
    images = normalize(uint8.to(loaded.device), loaded.preprocessing.mean,
                       loaded.preprocessing.std)
    targets = torch.from_numpy(predicted[chosen]).to(loaded.device)
    attribution = attribute(loaded.model, images, targets)
    paths = selection.index.paths
    return [
        WorstError(
            index=int(i),
            path=str(paths[i]) if paths else None,
            true=loaded.classes[int(clean.labels[c])],
            predicted=loaded.classes[int(predicted[c])],
            confidence=float(confidence[c]),
            method=attribution.method,
            overlay_png=overlay_png(crop.numpy(), heat),
        )
        for i, c, crop, heat in zip(dataset_indices, chosen, uint8, attribution.heatmaps,
                                    strict=True)
    ]


def crops(loaded: LoadedModel, pixels: np.ndarray, dataset_indices: np.ndarray) -> torch.Tensor:
    """The eval crops (uint8 NCHW, on the CPU) of these images, as the predictions saw them."""
    transform = eval_transform(loaded.preprocessing.img_size)
    return torch.stack([transform(torch.from_numpy(np.array(pixels[int(i)])))
                        for i in dataset_indices])


def overlay_png(crop: np.ndarray, heat: np.ndarray) -> str:
    """A uint8 CHW crop with an (H, W) heatmap in [0, 1] blended in (jet, weighted by the
    heat: cold places show the image as it is), as a base64 PNG."""
    image = crop.transpose(1, 2, 0).astype(np.float32)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    heat = np.clip(heat, 0.0, 1.0)
    colored = colormaps["jet"](heat)[..., :3] * 255.0
    alpha = BLEND * heat[..., None]
    blended = ((1 - alpha) * image + alpha * colored).clip(0, 255).astype(np.uint8)
    scale = max(1, math.ceil(OVERLAY_PX / min(blended.shape[:2])))
    blended = blended.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
