"""Is the model's confidence honest: the expected calibration error, the reliability
diagram's bins, and temperature scaling (Guo et al. 2017).

ECE (torchmetrics' CalibrationError, L1, BINS equal-width bins of the top-class confidence):
the mean over images of |accuracy - confidence| of their bin. Temperature scaling divides the
logits by one T > 0, fitted on a validation split by minimizing the NLL over log T (L-BFGS);
it never changes a prediction, only how sure the model says it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from workers.evaluate.metrics import nll
from workers.evaluate.predictions import Predictions

BINS = 15


def ece(predictions: Predictions, temperature: float = 1.0) -> float:
    probs = torch.from_numpy(predictions.probabilities(temperature))
    target = torch.from_numpy(predictions.labels)
    return float(multiclass_calibration_error(probs, target, probs.shape[1], n_bins=BINS,
                                              norm="l1"))


def reliability_bins(predictions: Predictions, temperature: float = 1.0) -> list[dict[str, Any]]:
    """Per confidence bin (lower, upper]: images, their mean confidence and accuracy (None when
    the bin is empty)."""
    probs = predictions.probabilities(temperature)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == predictions.labels
    edges = np.linspace(0.0, 1.0, BINS + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, BINS - 1)
    rows = []
    for b in range(BINS):
        members = which == b
        count = int(members.sum())
        rows.append({
            "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return rows


def fit_temperature(val: Predictions, max_iter: int = 100) -> float:
    """The T minimizing the NLL of val's logits / T (optimized as log T, so T stays > 0)."""
    # autograd on, whatever mode the caller runs in (inference_mode tensors take no gradient)
    with torch.inference_mode(False), torch.enable_grad():
        logits = torch.from_numpy(val.logits).double()
        target = torch.from_numpy(val.labels)
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter,
                                      line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), target)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_t.detach().exp())


@dataclass(frozen=True)
class Calibration:
    ece: float
    nll: float
    bins: list[dict[str, Any]]
    temperature: float | None  # None: no val split to fit it on
    fitted_on: str  # which split, or why none
    ece_calibrated: float | None
    nll_calibrated: float | None
    bins_calibrated: list[dict[str, Any]] | None
    val_nll: float | None
    val_nll_calibrated: float | None


def calibrate(evaluated: Predictions, val: Predictions | None, fitted_on: str) -> Calibration:
    """ECE and reliability of `evaluated`, before and after the temperature fitted on `val`."""
    if val is None:
        return Calibration(ece(evaluated), nll(evaluated), reliability_bins(evaluated), None,
                           fitted_on, None, None, None, None, None)
    t = fit_temperature(val)
    return Calibration(
        ece(evaluated), nll(evaluated), reliability_bins(evaluated), t, fitted_on,
        ece(evaluated, t), nll(evaluated, t), reliability_bins(evaluated, t),
        nll(val), nll(val, t),
    )
