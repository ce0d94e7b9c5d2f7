"""Evaluation metrics (torchmetrics): loss, top-1, macro precision/recall/F1, AUROC, confusion."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


class Evaluator:
    """Accumulates one pass over a split; `compute(prefix)` returns plain JSON-ready numbers."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.scores = MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes, average="micro"),
                "precision": MulticlassPrecision(num_classes, average="macro"),
                "recall": MulticlassRecall(num_classes, average="macro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
                "auroc": MulticlassAUROC(num_classes, average="macro"),
            }
        ).to(device)
        self.confusion = MulticlassConfusionMatrix(num_classes).to(device)
        self.loss = MeanMetric().to(device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        self.loss.update(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
        probs = logits.softmax(dim=1)
        self.scores.update(probs, targets)
        self.confusion.update(probs, targets)

    def compute(self, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}_loss": float(self.loss.compute())}
        out.update({f"{prefix}_{k}": float(v) for k, v in self.scores.compute().items()})
        out[f"{prefix}_confusion_matrix"] = self.confusion.compute().int().tolist()
        return out
