"""The report's scores are scikit-learn's for the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from workers.evaluate import metrics
from workers.evaluate.predictions import Predictions


def synthetic(n: int = 400, classes: int = 5, seed: int = 0, skill: float = 1.5) -> Predictions:
    """Logits that lean towards the true class, with plenty of mistakes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + skill * np.eye(classes)[labels]
    return Predictions(logits.astype(np.float32), labels.astype(np.int64))


def test_scores_equal_scikit_learns() -> None:
    p = synthetic()
    probs = p.probabilities()
    predicted = probs.argmax(axis=1)
    got = metrics.scores(p)
    assert got["accuracy"] == pytest.approx(accuracy_score(p.labels, predicted), abs=1e-6)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            p.labels, predicted, average=average, zero_division=0)
        assert got[f"precision_{average}"] == pytest.approx(precision, abs=1e-6)
        assert got[f"recall_{average}"] == pytest.approx(recall, abs=1e-6)
        assert got[f"f1_{average}"] == pytest.approx(f1, abs=1e-6)
    auroc = roc_auc_score(p.labels, probs, multi_class="ovr", average="macro")
    assert got["auroc_macro"] == pytest.approx(auroc, abs=1e-5)
    assert got["nll"] == pytest.approx(log_loss(p.labels, probs), abs=1e-5)
    assert 0.3 < got["accuracy"] < 0.9  # a test with mistakes in it


def test_per_class_table_and_confusion_matrix_equal_scikit_learns() -> None:
    p = synthetic(seed=1)
    predicted = p.probabilities().argmax(axis=1)
    classes = ["a", "b", "c", "d", "e"]
    rows = metrics.per_class(p, classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        p.labels, predicted, labels=range(5), zero_division=0)
    assert [r["class"] for r in rows] == classes
    np.testing.assert_allclose([r["precision"] for r in rows], precision, atol=1e-6)
    np.testing.assert_allclose([r["recall"] for r in rows], recall, atol=1e-6)
    np.testing.assert_allclose([r["f1"] for r in rows], f1, atol=1e-6)
    assert [r["support"] for r in rows] == support.tolist()
    one_vs_rest = [roc_auc_score(p.labels == i, p.probabilities()[:, i]) for i in range(5)]
    np.testing.assert_allclose([r["auroc"] for r in rows], one_vs_rest, atol=1e-5)
    assert metrics.confusion(p) == confusion_matrix(p.labels, predicted, labels=range(5)).tolist()


def test_a_class_without_images_is_left_out_of_the_macro_auroc() -> None:
    p = synthetic(classes=4, seed=2)
    kept = p.labels != 3  # no image of class 3 is left, though the model still predicts it
    p = Predictions(p.logits[kept], p.labels[kept])
    probs = p.probabilities()
    got = metrics.scores(p)
    rows = metrics.per_class(p, ["a", "b", "c", "d"])
    assert rows[3]["auroc"] is None and rows[3]["support"] == 0
    present = [roc_auc_score(p.labels == i, probs[:, i]) for i in range(3)]
    assert got["auroc_macro"] == pytest.approx(np.mean(present), abs=1e-5)
    precision, recall, f1, _ = precision_recall_fscore_support(
        p.labels, probs.argmax(axis=1), average="macro", zero_division=0)
    assert got["precision_macro"] == pytest.approx(precision, abs=1e-6)
    assert got["recall_macro"] == pytest.approx(recall, abs=1e-6)
    assert got["f1_macro"] == pytest.approx(f1, abs=1e-6)
    assert set(metrics.curves(p, ["a", "b", "c", "d"])["roc"]) == {"a", "b", "c"}


def test_curves_run_from_corner_to_corner() -> None:
    p = synthetic(seed=3)
    curves = metrics.curves(p, ["a", "b", "c", "d", "e"])
    for roc in curves["roc"].values():
        assert len(roc["fpr"]) == metrics.CURVE_POINTS
        assert {roc["fpr"][0], roc["tpr"][0]} <= {0.0, 1.0} and roc["fpr"][-1] in (0.0, 1.0)
        assert sorted(roc["fpr"]) in (roc["fpr"], roc["fpr"][::-1])  # monotone
    for pr in curves["pr"].values():
        assert all(0.0 <= v <= 1.0 for v in pr["precision"] + pr["recall"])
