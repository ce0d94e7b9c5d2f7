"""Bootstrap intervals of the summary scores, and the verdict of a comparison with a job."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workers.evaluate import bootstrap, calibration, metrics
from workers.evaluate.bootstrap import compare, intervals, verdict
from workers.evaluate.predictions import Predictions


def predictions(n: int, classes: int = 5, accuracy: float = 0.8, seed: int = 0) -> Predictions:
    """Logits that put the true class on top for about `accuracy` of the images, with varied
    confidences."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes)).astype(np.float32)
    right = rng.random(n) < accuracy
    top = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    logits[np.arange(n), top] += rng.uniform(1.0, 4.0, n).astype(np.float32)
    return Predictions(logits, labels.astype(np.int64))


def test_the_resampled_scores_are_the_reports_scores_on_the_same_images() -> None:
    p = predictions(3000)
    matrix = np.array([metrics.confusion(p)])
    mine = {name: float(v[0]) for name, v in bootstrap._from_confusion(matrix, len(p)).items()}
    theirs = metrics.scores(p)
    for name, value in mine.items():
        assert value == pytest.approx(theirs[name], abs=1e-6), name
    # a class with neither an image nor a prediction is left out of the macro mean, as there
    labels = np.where(p.labels == 4, 0, p.labels)
    logits = p.logits.copy()
    logits[:, 4] = -100
    absent = Predictions(logits, labels)
    stacked = bootstrap._from_confusion(np.array([metrics.confusion(absent)]), len(p))
    assert stacked["f1_macro"][0] == pytest.approx(metrics.scores(absent)["f1_macro"], abs=1e-6)


def test_intervals_contain_the_estimate_shrink_with_images_and_are_seeded() -> None:
    small, large = predictions(400), predictions(6400, seed=1)
    cis = intervals(small, seed=3)
    assert set(cis) >= {"accuracy", "f1_macro", "precision_macro", "recall_macro", "ece", "nll"}
    scores = metrics.scores(small)
    for name in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "f1_weighted", "nll"):
        assert cis[name]["low"] <= scores[name] <= cis[name]["high"], name
        assert cis[name]["se"] > 0
    ece = calibration.ece(small)  # badly calibrated logits: the estimate is inside too
    assert cis["ece"]["low"] <= ece <= cis["ece"]["high"]
    wide = intervals(large, seed=3)
    for name in ("accuracy", "f1_macro", "ece"):
        assert (wide[name]["high"] - wide[name]["low"]) < 0.5 * (cis[name]["high"] - cis[name]["low"])
    assert intervals(small, seed=3) == cis
    assert intervals(small, seed=4) != cis
    assert intervals(Predictions(small.logits[:0], small.labels[:0]), seed=0) == {}


def test_the_accuracy_se_is_the_binomial_one() -> None:
    for n, accuracy in ((500, 0.9), (5000, 0.7)):
        p = predictions(n, accuracy=accuracy, seed=n)
        acc = metrics.scores(p)["accuracy"]
        assert intervals(p, seed=0)["accuracy"]["se"] == pytest.approx(
            math.sqrt(acc * (1 - acc) / n), rel=0.15)


def test_chunks_bound_the_memory_and_give_the_same_kind_of_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = predictions(2000)
    whole = intervals(p, seed=0)
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 2000 * 7)  # 7 resamples at a time
    chunked = intervals(p, seed=0)
    for name, ci in whole.items():  # other draws, the same distribution
        assert chunked[name]["se"] == pytest.approx(ci["se"], rel=0.15), name


def test_the_verdict_is_the_difference_beyond_1_96_standard_errors() -> None:
    assert verdict("accuracy", -0.05, 0.02, 0.01) == "worse"  # 1.96 * 0.0224 = 0.044
    assert verdict("accuracy", -0.04, 0.02, 0.01) == "within noise"
    assert verdict("accuracy", 0.05, 0.02, 0.01) == "better"
    assert verdict("ece", 0.05, 0.02, 0.01) == "worse"  # lower is better
    assert verdict("ece", -0.05, 0.02, 0.01) == "better"
    assert verdict("nll", 0.5, 0.1, 0.0) == "worse"
    new = {"accuracy": 0.80, "f1_macro": 0.79, "auroc_macro": 0.9, "ece": None}
    cis = {"accuracy": {"low": 0.77, "high": 0.83, "se": 0.015},
           "f1_macro": {"low": 0.76, "high": 0.82, "se": 0.015},
           "ece": {"low": 0.01, "high": 0.05, "se": 0.01}}
    job = {"accuracy": 0.90, "f1_macro": 0.80, "auroc_macro": 0.95}
    rows = compare(new, cis, job, None)  # an older job: no intervals, se_job = 0
    assert [(r["metric"], r["verdict"]) for r in rows] == [
        ("accuracy", "worse"), ("f1_macro", "within noise")]  # no interval: no row (auroc)
    assert rows[0]["difference"] == pytest.approx(-0.10) and rows[0]["se"] == 0.015
    job_cis = {"accuracy": {"low": 0.0, "high": 1.0, "se": 0.05}}
    rows = compare(new, cis, job, job_cis)
    assert rows[0]["verdict"] == "within noise"
    assert rows[0]["se"] == pytest.approx(math.hypot(0.015, 0.05))
