"""A report's scores under the names a job records for a split (`test_accuracy`, `test_f1`,
...): the names the training loop's validation uses, so the job's scoring of its published model
is the evaluation itself, not a second pass over the test images."""

from __future__ import annotations

from typing import Any

# the report's score -> the split metric's name (workers.train.metrics.Evaluator's)
_NAMES = {"accuracy": "accuracy", "precision_macro": "precision", "recall_macro": "recall",
          "f1_macro": "f1", "auroc_macro": "auroc", "nll": "loss"}


def split_metrics(report: dict[str, Any], split: str) -> dict[str, Any]:
    """`report` (`Report.to_dict()`) as `{split}_*` metrics: the scores, the confusion matrix,
    the number of images, the expected calibration error and, when the corruptions were scored,
    their mean relative accuracy drop."""
    scores = report["metrics"]
    out: dict[str, Any] = {f"{split}_{name}": scores[key] for key, name in _NAMES.items()
                           if scores.get(key) is not None}
    out[f"{split}_ece"] = report["calibration"]["ece"]
    if report["robustness"] is not None:
        out[f"{split}_mean_corruption_drop"] = report["robustness"]["mean_relative_drop"]
    out[f"{split}_confusion_matrix"] = report["confusion_matrix"]
    out[f"{split}_images"] = report["images"]
    return out
