"""What a served model does now, against what its job measured: `automl monitor`.

`monitor_report` reads the monitoring store (`storage.monitoring.MonitorStore`) for a few
windows and compares each with the version's reference (reference.json, written by `automl
deploy`): the predicted class distribution with the test set's, the confidence histogram with
the test set's, each input signature feature with the training images', and, where clients sent
feedback labels, accuracy and macro F1 with the job's test scores. `check` turns a report into
alerts, by thresholds from `Thresholds` (defaults < the version's automl.json `monitor` section <
command-line flags).

The drift measure is the population stability index over the reference's own bins (the 15
confidence bins, the classes, the training values' deciles):

    PSI = sum_i (p_i - q_i) * ln(p_i / q_i)

p the window's fractions, q the reference's. It needs counts per bin only, so it works on the
store's bounded hourly rollups and on a reference that keeps 10 numbers per feature, never the
raw values; Kolmogorov-Smirnov would need every value of both samples (or their full empirical
CDFs), and on the large windows a server produces it flags differences too small to matter,
as any significance test does. PSI is an effect size with conventional reading (< 0.1 stable,
0.1-0.2 moderate, > 0.2 shifted). But it is noisy on few predictions (its expected value with
no drift at all is about (bins - 1) / n: 0.3 for 10 bins and 30 predictions), so a drift alert
needs both: PSI above its threshold and a chi-square goodness-of-fit test on the same bins
rejecting "same distribution" at `p_value` (0.01). On large windows the test always rejects and
PSI decides; on small ones the test keeps noise from alerting. Windows with fewer than
`min_predictions` predictions (labels, for accuracy) are reported but never judged.

No torch, no scikit-learn: numpy (and scipy's chi-square tail, imported when a report is made).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from serving.signature import FEATURES
from storage.monitoring import CONFIDENCE_BINS, HOUR, Held, Rollup, confidence_bin

_UNITS = {"s": 1, "m": 60, "h": HOUR, "d": 24 * HOUR, "w": 7 * 24 * HOUR}
_EPS = 1e-4  # a reference bin's floor: a class the test set never predicted is not infinitely far


class MonitorSource(Protocol):
    """What the monitor reads (`storage.monitoring.MonitorStore` is one)."""

    def held(self, model: str, since: float, until: float,
             version: str | None = None) -> list[Held]: ...

    def rollups(self, model: str, since: float, until: float,
                version: str | None = None) -> list[Rollup]: ...


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2  # PSI above this (and the chi-square test rejecting): drift
    accuracy_drop: float = 0.05  # accuracy (or macro F1) this far below the job's test score
    min_predictions: int = 30  # fewer predictions (labels) in a window: not judged
    p_value: float = 0.01  # the chi-square test's level

    def __post_init__(self) -> None:
        if not self.psi > 0:
            raise ValueError(f"psi threshold must be positive, got {self.psi}")
        if not 0 <= self.accuracy_drop <= 1:
            raise ValueError(f"accuracy_drop must be in [0, 1], got {self.accuracy_drop}")
        if self.min_predictions < 1:
            raise ValueError(f"min_predictions must be at least 1, got {self.min_predictions}")
        if not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be in (0, 1), got {self.p_value}")

    @classmethod
    def resolve(cls, meta: Mapping[str, Any] | None = None, **flags: Any) -> Thresholds:
        """Defaults, then the version's automl.json `monitor` section, then the flags given
        (None: not given)."""
        kinds = {f.name: int if f.name == "min_predictions" else float for f in fields(cls)}
        chosen: dict[str, Any] = {}
        section = (meta or {}).get("monitor") or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"automl.json's monitor section is not a mapping: {section!r}")
        for source in (section, flags):
            for key, value in source.items():
                if key in kinds and value is not None:
                    try:
                        chosen[key] = kinds[key](value)
                    except (TypeError, ValueError):
                        raise ValueError(f"{key} must be a number, got {value!r}") from None
        return cls(**chosen)


@dataclass(frozen=True)
class Alert:
    name: str  # class_drift, confidence_drift, input_drift.FEATURE, accuracy_drop, f1_drop
    window: str  # the window's start, ISO 8601 UTC
    value: float
    threshold: float
    message: str  # one line


def parse_window(window: str | float) -> int:
    """`1h`, `30m`, `2d`, `90s`, `1w`, or seconds: the window's length in seconds."""
    if isinstance(window, int | float) and not isinstance(window, bool):
        seconds = int(window)
    else:
        found = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", str(window))
        if not found:
            raise ValueError(f"window {window!r} is not a duration such as 1h, 30m, 2d or 3600")
        seconds = int(found.group(1)) * _UNITS[found.group(2) or "s"]
    if seconds < 60:
        raise ValueError(f"window {window!r} is shorter than a minute")
    return seconds


def psi(observed: ArrayLike, expected: ArrayLike) -> float:
    """PSI of counts `observed` against the reference's fractions `expected` (same bins). The
    window's fractions are smoothed by half a count per bin, the reference's floored at 1e-4."""
    counts = np.asarray(observed, dtype=float)
    q = _floored(expected)
    p = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    return float(np.sum((p - q) * np.log(p / q)))


def chi_square_p(observed: ArrayLike, expected: ArrayLike) -> float:
    """The p-value of Pearson's goodness-of-fit test: `observed` counts drawn from the
    reference's fractions `expected`."""
    from scipy.special import chdtrc

    counts = np.asarray(observed, dtype=float)
    n = counts.sum()
    if n == 0 or len(counts) < 2:
        return 1.0
    wanted = _floored(expected) * n
    statistic = float(np.sum((counts - wanted) ** 2 / wanted))
    return float(chdtrc(len(counts) - 1, statistic))


def _floored(fractions: ArrayLike) -> np.ndarray:
    q = np.maximum(np.asarray(fractions, dtype=float), _EPS)
    return np.asarray(q / q.sum())


def _confidence_edges(reference: Mapping[str, Any], bins: int) -> np.ndarray:
    """The reference's confidence bin edges (deploy writes the evaluation's reliability bins:
    15 equal ones, (e_i, e_i+1], the first closed at 0); equal bins where it gives none."""
    edges = (reference.get("confidence") or {}).get("edges") or []
    if bins and len(edges) == bins + 1:
        return np.asarray(edges, dtype=float)
    return np.linspace(0, 1, (bins or CONFIDENCE_BINS) + 1)


def _mean_confidence(histogram: ArrayLike, edges: np.ndarray) -> float | None:
    """The mean over the bins' midpoints: the same estimate for the window (whose rollups
    keep only the histogram) and for the test set (whose reference keeps only fractions)."""
    h = np.asarray(histogram, dtype=float)
    middle = (edges[:-1] + edges[1:]) / 2
    return None if h.sum() == 0 else float(np.dot(h, middle) / h.sum())


def _bin_signature(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts over (-inf, e0], (e0, e1], ..., (e_last, inf): the reference's decile bins."""
    index = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float),
                            side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(int).tolist()


def feedback_scores(held: Sequence[Held], classes: int) -> dict[str, Any]:
    """Accuracy, macro F1 (over the classes that occur as truth or prediction, as scikit-learn
    computes it) and the confusion matrix (rows: the label sent back, columns: the prediction)
    of the predictions that received feedback."""
    labeled = [(h.feedback, h.label) for h in held
               if h.feedback is not None and h.feedback >= 0 and h.label >= 0]
    size = max([classes, *(max(t, p) + 1 for t, p in labeled)]) if labeled else classes
    confusion = np.zeros((size, size), dtype=int)
    for true, predicted in labeled:
        confusion[true, predicted] += 1
    if not labeled:
        return {"labeled": 0, "accuracy": None, "macro_f1": None,
                "confusion": confusion.tolist()}
    tp = np.diag(confusion).astype(float)
    support, predicted_count = confusion.sum(axis=1), confusion.sum(axis=0)
    present = (support + predicted_count) > 0
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {"labeled": len(labeled), "accuracy": float(tp.sum() / len(labeled)),
            "macro_f1": float(f1[present].mean()), "confusion": confusion.tolist()}


def monitor_report(
    store: MonitorSource, model: str, reference: Mapping[str, Any], *,
    window: str | float = "1h", windows: int = 24, now: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Each of the last `windows` windows of `window` (the latest one still filling), oldest
    first, against `reference` (a version's reference.json). Windows are aligned to multiples
    of their length in unix time; one a whole number of hours long counts predictions,
    classes and confidences from the rollups (every prediction), a shorter one from the sampled
    predictions. Input drift and feedback always come from the sample. `version`: only that
    version's predictions (None: every version's)."""
    length = parse_window(window)
    if windows < 1:
        raise ValueError("windows must be at least 1")
    now = time.time() if now is None else now
    end = (math.floor(now / length) + 1) * length
    start = end - windows * length
    classes = list(reference.get("classes") or [])
    distribution = reference.get("class_distribution") or {}
    test_predicted = distribution.get("test_predicted") or []
    test_confidence = (reference.get("confidence") or {}).get("test") or []
    confidence_edges = _confidence_edges(reference, len(test_confidence))
    standard_bins = len(test_confidence) == CONFIDENCE_BINS and np.allclose(
        confidence_edges, np.linspace(0, 1, CONFIDENCE_BINS + 1))
    signatures = reference.get("signature") or {}
    metrics = reference.get("test_metrics") or {}
    by_rollups = length % HOUR == 0
    rollups = store.rollups(model, start, end, version) if by_rollups else []
    held = store.held(model, start, end, version)

    report_windows = []
    for k in range(windows):
        since, until = start + k * length, start + (k + 1) * length
        sample = [h for h in held if since <= h.at < until]
        if by_rollups:
            inside = [r for r in rollups if since <= r.hour < until]
            predictions = sum(r.count for r in inside)
            class_counts = np.zeros(len(classes), dtype=int)
            for r in inside:
                for label, n in r.classes.items():
                    if 0 <= label < len(classes):
                        class_counts[label] += n
            confidence_counts = np.sum([r.confidence for r in inside], axis=0) if inside \
                else np.zeros(CONFIDENCE_BINS, dtype=int)
        else:
            predictions = len(sample)
            class_counts = np.bincount([h.label for h in sample if 0 <= h.label < len(classes)],
                                       minlength=len(classes))
            confidence_counts = np.bincount([confidence_bin(h.confidence) for h in sample],
                                            minlength=CONFIDENCE_BINS)
        entry: dict[str, Any] = {
            "start": _iso(since), "end": _iso(until), "start_unix": since,
            "predictions": int(predictions), "sampled": len(sample),
            "source": "rollups" if by_rollups else "sample",
        }
        if len(test_predicted) == len(classes) and classes:
            total = class_counts.sum()
            entry["classes"] = {
                "counts": class_counts.astype(int).tolist(),
                "psi": psi(class_counts, test_predicted) if total else None,
                "p_value": chi_square_p(class_counts, test_predicted) if total else None,
            }
        if test_confidence and not standard_bins:  # another binning: the sample's values
            index = np.searchsorted(confidence_edges, [h.confidence for h in sample], "left")
            confidence_counts = np.bincount(np.clip(index - 1, 0, len(test_confidence) - 1),
                                            minlength=len(test_confidence))
        if test_confidence:
            total = int(np.sum(confidence_counts))
            entry["confidence"] = {
                "histogram": np.asarray(confidence_counts, dtype=int).tolist(),
                "mean": _mean_confidence(confidence_counts, confidence_edges),
                "psi": psi(confidence_counts, test_confidence) if total else None,
                "p_value": chi_square_p(confidence_counts, test_confidence) if total else None,
            }
        inputs: dict[str, Any] = {}
        for feature in FEATURES:
            ref = signatures.get(feature)
            if not ref:
                continue
            values = [h.signature[feature] for h in sample
                      if isinstance(h.signature.get(feature), int | float)]
            counts = _bin_signature(values, ref["edges"])
            inputs[feature] = {
                "n": len(values), "counts": counts,
                "psi": psi(counts, ref["train"]) if values else None,
                "p_value": chi_square_p(counts, ref["train"]) if values else None,
            }
        if inputs:
            entry["inputs"] = inputs
        entry["feedback"] = feedback_scores(sample, len(classes))
        report_windows.append(entry)

    return {
        "model": model, "version": version, "window": length, "windows": report_windows,
        "reference": {
            "classes": classes, "test_images": reference.get("test_images"),
            "test_accuracy": metrics.get("test_accuracy"), "test_f1": metrics.get("test_f1"),
            "mean_confidence": _mean_confidence(test_confidence, confidence_edges)
            if test_confidence else None,
            "signature": bool(signatures),
        },
        "measure": "PSI on the reference's bins, with a chi-square test at the same bins",
    }


def check(report: Mapping[str, Any], thresholds: Thresholds) -> list[Alert]:
    """The alerts a report raises: drift (PSI above its threshold and the chi-square test
    rejecting) of the predicted classes, the confidences or an input feature; accuracy or
    macro F1 more than `accuracy_drop` below the job's test score. A window with fewer than
    `min_predictions` predictions (labels, for the scores) is not judged."""
    alerts: list[Alert] = []
    ref = report.get("reference") or {}
    for entry in report.get("windows", []):
        at = entry["start"]

        def drift(name: str, what: str, measured: Mapping[str, Any] | None, n: int,
                  at: str = at) -> None:
            if not measured or measured.get("psi") is None or n < thresholds.min_predictions:
                return
            value, p = measured["psi"], measured["p_value"]
            if value > thresholds.psi and p < thresholds.p_value:
                alerts.append(Alert(name, at, value, thresholds.psi,
                                    f"{at}: {what} drifted: PSI {value:.3f} > {thresholds.psi} "
                                    f"(chi-square p={p:.2g}, n={n})"))

        drift("class_drift", "predicted classes", entry.get("classes"), entry["predictions"])
        drift("confidence_drift", "confidence", entry.get("confidence"), entry["predictions"])
        for feature, measured in (entry.get("inputs") or {}).items():
            drift(f"input_drift.{feature}", f"input {feature}", measured, measured["n"])

        scores = entry.get("feedback") or {}
        if scores.get("labeled", 0) < thresholds.min_predictions:
            continue
        for name, score, test in (("accuracy_drop", "accuracy", "test_accuracy"),
                                  ("f1_drop", "macro_f1", "test_f1")):
            value, baseline = scores.get(score), ref.get(test)
            if value is None or baseline is None:
                continue
            drop = float(baseline) - float(value)
            if drop > thresholds.accuracy_drop:
                alerts.append(Alert(
                    name, at, drop, thresholds.accuracy_drop,
                    f"{at}: {score} {value:.3f} is {drop:.3f} below the test's {baseline:.3f} "
                    f"(> {thresholds.accuracy_drop}, {scores['labeled']} labels)"))
    return alerts


def alerts_dict(alerts: Sequence[Alert]) -> list[dict[str, Any]]:
    return [asdict(a) for a in alerts]


def _iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))
