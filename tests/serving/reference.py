"""A monitoring reference built by hand, as `automl deploy` writes reference.json, and traffic
drawn from it (or shifted from it) recorded in a store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from serving.signature import FEATURES
from storage.monitoring import CONFIDENCE_BINS, HOUR, MonitorStore, Served, confidence_bin

CLASSES = ["cat", "dog", "fox"]
PREDICTED = [0.5, 0.3, 0.2]
# a feature's training values: N(mean, sd) per feature
TRAIN = {"width": (640.0, 60.0), "height": (480.0, 40.0), "brightness": (0.5, 0.1),
         "contrast": (0.2, 0.04), "saturation": (0.3, 0.05)}
CONFIDENCE = (0.85, 0.08)  # the test set's confidences: N(mean, sd) clipped to [0, 1]
T0 = 1_700_000_000.0 - 1_700_000_000.0 % HOUR + 3 * HOUR  # an hour's start


def reference(*, accuracy: float = 0.9, f1: float = 0.88, signature: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    confidences = np.clip(rng.normal(*CONFIDENCE, 20_000), 0, 1)
    hist = np.bincount([confidence_bin(c) for c in confidences], minlength=CONFIDENCE_BINS)
    out: dict[str, Any] = {
        "classes": CLASSES,
        "test_metrics": {"test_accuracy": accuracy, "test_f1": f1, "test_loss": 0.3},
        "test_images": 300,
        "class_distribution": {"test_true": PREDICTED, "test_predicted": PREDICTED},
        "confidence": {"edges": [i / CONFIDENCE_BINS for i in range(CONFIDENCE_BINS + 1)],
                       "test": (hist / hist.sum()).tolist()},
    }
    if signature:
        out["signature"] = {}
        for feature in FEATURES:
            values = rng.normal(*TRAIN[feature], 20_000)
            edges = np.quantile(values, np.linspace(0.1, 0.9, 9))
            index = np.searchsorted(edges, values, side="left")
            train = np.bincount(index, minlength=10) / len(values)
            out["signature"][feature] = {"edges": edges.tolist(), "train": train.tolist()}
    return out


def traffic(store: MonitorStore, n: int, *, at: float = T0, model: str = "digits",
            version: str = "1", seed: int = 1, classes: list[float] | None = None,
            shift: dict[str, float] | None = None, confidence: tuple[float, float] = CONFIDENCE,
            correct: float | None = None, prefix: str = "p") -> list[Served]:
    """`n` predictions spread over the hour from `at`, drawn as the reference says (or with
    `classes` other fractions, `shift` added to a feature's values), recorded in batches of 8;
    `correct`: send feedback for every one, that fraction of them right."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASSES), size=n, p=classes or PREDICTED)
    rows = []
    for i in range(n):
        signature = {f: float(rng.normal(*TRAIN[f]) + (shift or {}).get(f, 0.0)) for f in FEATURES}
        rows.append(Served(f"{prefix}{seed}-{i}", model, version, int(labels[i]),
                           float(np.clip(rng.normal(*confidence), 0, 1)), signature,
                           at + i * HOUR / n))
    for start in range(0, n, 8):
        store.record(rows[start:start + 8])
    if correct is not None:
        right = rng.random(n) < correct
        for row, ok in zip(rows, right, strict=True):
            store.feedback(model, row.prediction_id,
                           row.label if ok else (row.label + 1) % len(CLASSES))
    return rows


def deploy(repository: Path, name: str, version: int, ref: dict[str, Any] | None,
           meta: dict[str, Any] | None = None) -> Path:
    """The files `automl deploy` writes, as far as the monitor reads them."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not read by the monitor")
    (folder / "automl.json").write_text(json.dumps(meta or {"classes": CLASSES}))
    if ref is not None:
        (folder / "reference.json").write_text(json.dumps(ref))
    return folder
