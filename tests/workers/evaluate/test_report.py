"""A whole evaluation of a real checkpoint: its numbers are scikit-learn's for the model's
predictions, its calibration and robustness sections hold together, and it is plain JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from tests.workers.evaluate.test_dataset import digits_folder
from workers.evaluate.corruptions import CORRUPTIONS, SEVERITIES
from workers.evaluate.dataset import select
from workers.evaluate.predictions import decoded_pixels, predict
from workers.evaluate.report import evaluate, relative_drop
from workers.model.hub import write_hub_folder
from workers.predict import load_checkpoint


@pytest.fixture(scope="module")
def report(checkpoint: Path) -> dict[str, Any]:
    return evaluate(checkpoint, seed=3, device=torch.device("cpu")).to_dict()


def test_the_reports_numbers_are_scikit_learns(checkpoint: Path, report: dict[str, Any]) -> None:
    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    selection = select(loaded)
    p = predict(loaded, selection, decoded_pixels(loaded, selection))
    probs, predicted = p.probabilities(), p.probabilities().argmax(1)
    m = report["metrics"]
    assert report["split"] == "test" and report["images"] == len(p) == 269
    assert m["accuracy"] == pytest.approx(accuracy_score(p.labels, predicted), abs=1e-6)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            p.labels, predicted, average=average, zero_division=0)
        assert (m[f"precision_{average}"], m[f"recall_{average}"], m[f"f1_{average}"]) == (
            pytest.approx(precision, abs=1e-6), pytest.approx(recall, abs=1e-6),
            pytest.approx(f1, abs=1e-6))
    auroc = roc_auc_score(p.labels, probs, multi_class="ovr", average="macro")
    assert m["auroc_macro"] == pytest.approx(auroc, abs=1e-5)
    assert report["confusion_matrix"] == confusion_matrix(p.labels, predicted).tolist()
    assert [r["support"] for r in report["per_class"]] == np.bincount(p.labels).tolist()
    assert m["accuracy"] > 0.5  # a model that learned something: the checks mean something


def test_calibration_and_robustness_hold_together(report: dict[str, Any]) -> None:
    cal = report["calibration"]
    assert cal["fitted_on"] == "the checkpoint's own val split" and cal["temperature"] > 0
    assert cal["val_nll_calibrated"] < cal["val_nll"]
    assert sum(b["count"] for b in cal["bins"]) == report["images"]
    rob = report["robustness"]
    assert rob["seed"] == 3 and rob["clean_accuracy"] == report["metrics"]["accuracy"]
    assert len(rob["results"]) == len(CORRUPTIONS) * len(SEVERITIES)
    for name in CORRUPTIONS:
        accuracies = [r["accuracy"] for r in rob["results"] if r["corruption"] == name]
        drops = [relative_drop(rob["clean_accuracy"], a) for a in accuracies]
        assert rob["relative_drop"][name] == pytest.approx(np.mean(drops))
    assert rob["mean_relative_drop"] == pytest.approx(np.mean(list(rob["relative_drop"].values())))
    assert rob["worst"][0] == max(rob["relative_drop"], key=rob["relative_drop"].get)
    noise = {r["severity"]: r["accuracy"] for r in rob["results"]
             if r["corruption"] == "gaussian_noise"}
    assert noise[3] < rob["clean_accuracy"]
    json.dumps(report, allow_nan=False)  # plain JSON: NaN became null


def test_a_pulled_model_folder_evaluates_the_same(
    checkpoint: Path, report: dict[str, Any], tmp_path: Path
) -> None:
    pulled = write_hub_folder(checkpoint, tmp_path / "model")  # what `automl pull` writes
    got = evaluate(pulled, corruptions=False, device=torch.device("cpu")).to_dict()
    assert got["metrics"] == pytest.approx(report["metrics"], abs=1e-5)
    assert got["calibration"]["temperature"] == pytest.approx(
        report["calibration"]["temperature"], rel=1e-4)


def test_another_dataset_without_corruptions(checkpoint: Path, tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "new", ["2", "8"], per_class=10, start=50)
    (root / "ignored.txt").write_text("not an image folder")
    got = evaluate(checkpoint, str(root), corruptions=False,
                   device=torch.device("cpu")).to_dict()
    assert got["split"] == "all" and got["images"] == 20 and got["robustness"] is None
    assert got["absent_classes"] == [d for d in map(str, range(10)) if d not in ("2", "8")]
    assert [r["support"] for r in got["per_class"]][2::6] == [10, 10]
    assert set(got["curves"]["roc"]) == {"2", "8"}
    assert got["calibration"]["fitted_on"] == "the checkpoint's own val split"
    shutil.rmtree(root)
