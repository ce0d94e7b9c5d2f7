"""ECE is the textbook computation; the fitted temperature makes val's confidences honest."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.workers.evaluate.test_metrics import synthetic
from workers.evaluate import calibration
from workers.evaluate.metrics import nll
from workers.evaluate.predictions import Predictions


def numpy_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al.'s ECE: bins (lower, upper] of the top-class confidence, weighted |acc - conf|."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lower, upper in itertools.pairwise(edges):
        members = (confidence > lower) & (confidence <= upper)
        if members.any():
            total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def overconfident(seed: int) -> Predictions:
    """Synthetic predictions whose logits are 4 times too large: `synthetic`'s logits x have
    N(skill * onehot, 1) rows, whose calibrated logits are skill * x (the Bayes posterior)."""
    p = synthetic(n=600, seed=seed)
    return Predictions(p.logits * 1.5 * 4.0, p.labels)


def test_ece_equals_a_direct_numpy_computation() -> None:
    for p in (synthetic(seed=0), overconfident(1)):
        probs = p.probabilities()
        assert calibration.ece(p) == pytest.approx(numpy_ece(probs, p.labels), abs=1e-5)
        assert calibration.ece(p, 2.0) == pytest.approx(
            numpy_ece(p.probabilities(2.0), p.labels), abs=1e-5)


def test_reliability_bins_hold_every_image_once_and_agree_with_the_ece() -> None:
    p = overconfident(2)
    bins = calibration.reliability_bins(p)
    assert len(bins) == calibration.BINS and sum(b["count"] for b in bins) == len(p)
    weighted = sum(b["count"] / len(p) * abs(b["accuracy"] - b["confidence"])
                   for b in bins if b["count"])
    assert weighted == pytest.approx(calibration.ece(p), abs=1e-5)
    assert all(b["accuracy"] is None for b in bins if not b["count"])


def test_temperature_scaling_lowers_val_nll_and_recovers_the_overconfidence() -> None:
    val, test = overconfident(3), overconfident(4)
    t = calibration.fit_temperature(val)
    assert 3.0 < t < 5.5  # the logits were scaled by 4
    assert nll(val, t) < nll(val) - 0.1
    result = calibration.calibrate(test, val, "val")
    assert result.temperature == t and result.fitted_on == "val"
    assert result.val_nll_calibrated is not None and result.val_nll is not None
    assert result.val_nll_calibrated < result.val_nll
    assert result.ece_calibrated is not None and result.ece_calibrated < result.ece / 2
    # predictions do not move, only their confidence
    assert (test.probabilities(t).argmax(1) == test.probabilities().argmax(1)).all()


def test_without_val_images_nothing_is_fitted() -> None:
    result = calibration.calibrate(synthetic(), None, "not fitted: no val split")
    assert result.temperature is None and result.ece_calibrated is None
    assert result.ece > 0 and result.fitted_on == "not fitted: no val split"
