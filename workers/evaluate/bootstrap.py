"""How sure the scores are: bootstrap intervals of the summary scores, and the comparison of a
new evaluation with a job's published one.

Intervals: RESAMPLES resamples of the evaluated images (with replacement, as many as there
are), all scores of one resample computed from its confusion counts, its per-image NLL and its
calibration bins; the 95% interval is the 2.5th and 97.5th percentiles of the resampled scores
(the percentile method), the standard error their standard deviation. Seeded: the same seed
gives the same intervals. Memory stays bounded for any number of images: the resamples are drawn
in chunks of at most CHUNK_ELEMENTS indices, never all B x N at once.

The scores with an interval: accuracy; precision, recall and F1, macro and weighted (torchmetrics'
definitions: a class with neither an image nor a prediction left out of the macro mean); the
NLL; the ECE (the same 15 bins as `calibration.ece`). The macro AUROC has none (a ranking per
class and per resample: too slow for what it adds). ECE is biased upward (|accuracy - confidence|
per bin is never negative), so for a well-calibrated model its resampled values sit above the
estimate and the interval may not contain it.

Comparison (`compare`, what `automl evaluate --against JOB` prints): per score, the job's value
(on its test split) and the new one, the difference d = new - job and its standard error
se = sqrt(se_new^2 + se_job^2) (the two evaluations are independent samples). The verdict is
`worse` when d + 1.96 se < 0, `better` when d - 1.96 se > 0, else `within noise`; for scores
where lower is better (ECE, NLL) d's sign is flipped first. A job published without intervals
(before they existed) counts as exact (se_job = 0), which makes a verdict more likely than it
should be; the comparison says so (`job_intervals: false`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workers.evaluate.calibration import BINS
from workers.evaluate.predictions import Predictions

RESAMPLES = 1000  # B: the percentiles' error is well under the intervals' width at 1000
LEVEL = 0.95
Z = 1.96  # the two-sided 95% normal quantile: the comparison's threshold, in standard errors
CHUNK_ELEMENTS = 1 << 20  # resampled indices (or confusion cells) held at once: 8 MB each
LOWER_IS_BETTER = frozenset({"ece", "nll"})


def intervals(
    predictions: Predictions, seed: int, resamples: int = RESAMPLES
) -> dict[str, dict[str, float]]:
    """{score: {"low", "high", "se"}} of the percentile bootstrap; {} for no images."""
    n = len(predictions)
    if n == 0:
        return {}
    logits = predictions.logits.astype(np.float64)
    labels = predictions.labels.astype(np.int64)
    k = logits.shape[1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predicted = log_probs.argmax(axis=1)
    confidence = np.exp(log_probs.max(axis=1))
    cell = labels * k + predicted  # the image's confusion cell
    image_nll = -log_probs[np.arange(n), labels]
    # torchmetrics' binning: bucketize(confidence, linspace(0, 1, BINS + 1), right=True) - 1
    which = np.searchsorted(np.linspace(0.0, 1.0, BINS + 1), confidence, side="right") - 1
    gap = (predicted == labels) - confidence  # correct - confident, summed per bin
    slots = BINS + 1

    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ELEMENTS // max(n, k * k))
    rows: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, chunk):
        c = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(c, n))
        offsets = np.arange(c)[:, None]
        counts = np.bincount((cell[drawn] + offsets * k * k).ravel(), minlength=c * k * k)
        scored = _from_confusion(counts.reshape(c, k, k), n)
        per_bin = np.bincount((which[drawn] + offsets * slots).ravel(), weights=gap[drawn].ravel(),
                              minlength=c * slots).reshape(c, slots)
        scored["ece"] = np.abs(per_bin).sum(axis=1) / n
        scored["nll"] = image_nll[drawn].mean(axis=1)
        del drawn
        for name, values in scored.items():
            rows.setdefault(name, []).append(values)
    alpha = (1 - LEVEL) / 2
    out = {}
    for name, parts in rows.items():
        values = np.concatenate(parts)
        low, high = np.quantile(values, [alpha, 1 - alpha])
        out[name] = {"low": float(low), "high": float(high),
                     "se": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def _from_confusion(matrix: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Scores of a stack of confusion matrices (R, K, K), rows true, columns predicted."""
    tp = np.diagonal(matrix, axis1=1, axis2=2).astype(np.float64)
    support = matrix.sum(axis=2)
    fp = matrix.sum(axis=1) - tp
    fn = support - tp
    out = {"accuracy": tp.sum(axis=1) / n}
    counted = (tp + fp + fn) > 0  # torchmetrics' macro mean leaves out classes with neither
    per_class = {"precision": _divide(tp, tp + fp), "recall": _divide(tp, tp + fn),
                 "f1": _divide(2 * tp, 2 * tp + fp + fn)}
    for name, score in per_class.items():
        out[f"{name}_macro"] = (score * counted).sum(axis=1) / np.maximum(counted.sum(axis=1), 1)
        out[f"{name}_weighted"] = (score * support).sum(axis=1) / n
    return out


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def compare(
    new: dict[str, float | None],
    new_intervals: dict[str, dict[str, float]],
    job: dict[str, float],
    job_intervals: dict[str, dict[str, float]] | None,
) -> list[dict[str, Any]]:
    """One row per score with an interval here and a value in the job: job, new (low, high),
    difference, its standard error and the verdict (see the module's docstring)."""
    rows = []
    for name, interval in new_intervals.items():
        value, reference = new.get(name), job.get(name)
        if value is None or reference is None or not math.isfinite(value):
            continue
        job_se = (job_intervals or {}).get(name, {}).get("se", 0.0)
        rows.append({"metric": name, "job": reference, "new": value, "low": interval["low"],
                     "high": interval["high"], "difference": value - reference,
                     "se": math.hypot(interval["se"], job_se),
                     "verdict": verdict(name, value - reference, interval["se"], job_se)})
    return rows


def verdict(name: str, difference: float, se_new: float, se_job: float) -> str:
    """`worse`, `better` or `within noise`: is `difference` (new - job) beyond Z standard
    errors of the difference, in the direction that is worse for `name`?"""
    gain = -difference if name in LOWER_IS_BETTER else difference
    se = math.hypot(se_new, se_job)
    if gain + Z * se < 0:
        return "worse"
    if gain - Z * se > 0:
        return "better"
    return "within noise"
