"""One evaluation of a checkpoint, end to end, as a `Report`: scores, curves, calibration and
robustness of its predictions on the selected images (`to_dict()`: plain JSON values)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.data.index import DatasetIndex
from workers.evaluate import bootstrap, calibration, metrics
from workers.evaluate.corruptions import CORRUPTIONS, SEVERITIES, Corrupter
from workers.evaluate.dataset import select, validation_for
from workers.evaluate.predictions import decoded_pixels, predict
from workers.evaluate.worst import DEFAULT_K, worst_errors
from workers.predict import load_checkpoint


@dataclass
class Report:
    checkpoint: str
    backbone: str
    dataset: str
    split: str
    images: int
    classes: list[str]
    absent_classes: list[str]  # the model's classes without an image in the split
    metrics: dict[str, float]
    confidence_intervals: dict[str, dict[str, float]]  # bootstrap: {score: {low, high, se}}
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    curves: dict[str, Any]
    calibration: dict[str, Any]
    robustness: dict[str, Any] | None  # None: --no-corruptions
    worst_errors: list[dict[str, Any]]  # most confidently wrong first; overlays: base64 PNGs
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN (a score with nothing to score) becomes None."""
        return _finite(dataclasses.asdict(self))


def evaluate(
    checkpoint: Path,
    source: str | None = None,
    split: str | None = None,
    *,
    seed: int = 0,
    corruptions: bool = True,
    worst: int = DEFAULT_K,
    batch_size: int = 128,
    device: torch.device | None = None,
    index: DatasetIndex | None = None,
) -> Report:
    """Evaluate `checkpoint` on `split` of `source` (None: its own dataset); see the package's
    docstring for which images that means; `worst`: how many of the worst errors to show.
    `index`: the checkpoint's own dataset as its job indexed it (a job scoring its published
    model), not indexed again."""
    started = time.perf_counter()
    loaded = load_checkpoint(checkpoint, device)
    selection = select(loaded, source, split, index)
    pixels = decoded_pixels(loaded, selection)
    clean = predict(loaded, selection, pixels, batch_size=batch_size)
    val_selection, fitted_on = validation_for(loaded, selection)
    val = None
    if val_selection is not None:
        val_pixels = pixels if val_selection.index is selection.index else decoded_pixels(
            loaded, val_selection)
        val = predict(loaded, val_selection, val_pixels, batch_size=batch_size)
    scores = metrics.scores(clean)
    robustness = None
    if corruptions:
        robustness = _robustness(scores["accuracy"], seed, lambda corrupter: metrics.scores(
            predict(loaded, selection, pixels, corrupter, batch_size)))
    return Report(
        checkpoint=str(checkpoint),
        backbone=loaded.config.backbone,
        dataset=selection.source,
        split=selection.split,
        images=len(selection),
        classes=loaded.classes,
        absent_classes=selection.absent_classes(loaded.classes),
        metrics=scores,
        confidence_intervals=bootstrap.intervals(clean, seed),
        per_class=metrics.per_class(clean, loaded.classes),
        confusion_matrix=metrics.confusion(clean),
        curves=metrics.curves(clean, loaded.classes),
        calibration=dataclasses.asdict(calibration.calibrate(clean, val, fitted_on)),
        robustness=robustness,
        worst_errors=[dataclasses.asdict(e)
                      for e in worst_errors(loaded, selection, pixels, clean, worst)],
        seconds=round(time.perf_counter() - started, 3),
    )


def _robustness(
    clean_accuracy: float, seed: int, score: Callable[[Corrupter], dict[str, float]]
) -> dict[str, Any]:
    """Scores per corruption and severity; the relative accuracy drop per corruption (mean
    over severities) and over all corruptions."""
    results = []
    drops: dict[str, float] = {}
    for name in CORRUPTIONS:
        per_severity = []
        for severity in SEVERITIES:
            scores = score(Corrupter(name, severity, seed))
            results.append({"corruption": name, "severity": severity, **scores})
            per_severity.append(relative_drop(clean_accuracy, scores["accuracy"]))
        drops[name] = float(np.mean(per_severity))
    return {
        "seed": seed,
        "severities": list(SEVERITIES),
        "clean_accuracy": clean_accuracy,
        "results": results,
        "relative_drop": drops,
        "mean_relative_drop": float(np.mean(list(drops.values()))),
        "worst": sorted(drops, key=lambda name: -drops[name]),
    }


def relative_drop(clean: float, corrupted: float) -> float:
    """(clean - corrupted) / clean; 0 when the clean score is 0 (nothing to lose)."""
    return (clean - corrupted) / clean if clean > 0 else 0.0


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
