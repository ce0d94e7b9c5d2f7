"""Scores of predictions (torchmetrics' functional API): the summary numbers, the per-class
table, the confusion matrix and the one-vs-rest ROC and precision-recall curves.

Macro and weighted averages follow torchmetrics (and scikit-learn): a class with neither an
image nor a prediction is left out of the macro mean. The macro AUROC is the mean of the
one-vs-rest AUROCs of the classes that have images (a class without positives has no curve).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_precision_recall_curve,
    multiclass_recall,
    multiclass_roc,
)

from workers.evaluate.predictions import Predictions

CURVE_POINTS = 101  # curves on fixed thresholds: a bounded report, whatever the images


def scores(predictions: Predictions) -> dict[str, float]:
    """accuracy, precision/recall/f1 (macro and weighted), auroc (macro) and nll."""
    probs, target, n = _tensors(predictions)
    out = {"accuracy": float(multiclass_accuracy(probs, target, n, average="micro"))}
    for average in ("macro", "weighted"):
        out[f"precision_{average}"] = float(multiclass_precision(probs, target, n, average=average))
        out[f"recall_{average}"] = float(multiclass_recall(probs, target, n, average=average))
        out[f"f1_{average}"] = float(multiclass_f1_score(probs, target, n, average=average))
    per_class = _class_auroc(probs, target, n)
    present = [v for v in per_class if v is not None]
    out["auroc_macro"] = float(np.mean(present)) if present else math.nan
    out["nll"] = nll(predictions)
    return out


def per_class(predictions: Predictions, classes: list[str]) -> list[dict[str, Any]]:
    """One row per class of the model: precision, recall, f1, auroc (None without images),
    support."""
    probs, target, n = _tensors(predictions)
    precision = multiclass_precision(probs, target, n, average=None).tolist()
    recall = multiclass_recall(probs, target, n, average=None).tolist()
    f1 = multiclass_f1_score(probs, target, n, average=None).tolist()
    auroc = _class_auroc(probs, target, n)
    support = np.bincount(predictions.labels, minlength=n).tolist()
    return [
        {"class": name, "precision": precision[i], "recall": recall[i], "f1": f1[i],
         "auroc": auroc[i], "support": support[i]}
        for i, name in enumerate(classes)
    ]


def confusion(predictions: Predictions) -> list[list[int]]:
    """Rows: true class, columns: predicted class (scikit-learn's orientation)."""
    probs, target, n = _tensors(predictions)
    matrix: list[list[int]] = multiclass_confusion_matrix(probs, target, n).int().tolist()
    return matrix


def curves(predictions: Predictions, classes: list[str]) -> dict[str, Any]:
    """One-vs-rest ROC (fpr, tpr) and precision-recall (recall, precision) per class with
    images, on CURVE_POINTS thresholds (a PR curve leaves out the thresholds above every
    score: no prediction, no precision)."""
    probs, target, n = _tensors(predictions)
    fpr, tpr, _ = multiclass_roc(probs, target, n, thresholds=CURVE_POINTS)
    precision, recall, _ = multiclass_precision_recall_curve(probs, target, n,
                                                             thresholds=CURVE_POINTS)
    present = set(predictions.labels.tolist())
    roc, pr = {}, {}
    for i, name in enumerate(classes):
        if i not in present:
            continue
        roc[name] = {"fpr": _rounded(fpr[i]), "tpr": _rounded(tpr[i])}
        defined = ~precision[i].isnan()  # thresholds nothing reaches have no precision
        pr[name] = {"recall": _rounded(recall[i][defined]),
                    "precision": _rounded(precision[i][defined])}
    return {"roc": roc, "pr": pr}


def nll(predictions: Predictions, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes (cross-entropy of logits / T)."""
    logits = torch.from_numpy(predictions.logits) / temperature
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(predictions.labels)))


def _class_auroc(probs: torch.Tensor, target: torch.Tensor, n: int) -> list[float | None]:
    with warnings.catch_warnings():  # a class without images: its None below says so
        warnings.simplefilter("ignore")
        values = multiclass_auroc(probs, target, n, average=None).tolist()
    present = set(target.tolist())
    return [float(v) if i in present else None for i, v in enumerate(values)]


def _tensors(predictions: Predictions) -> tuple[torch.Tensor, torch.Tensor, int]:
    logits = torch.from_numpy(predictions.logits)
    return logits.softmax(dim=1), torch.from_numpy(predictions.labels), logits.shape[1]


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in values]
