"""Logits from the decoded cache and the trial engine's batching: what `predict` gives for the
same images, through one data path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.evaluate.corruptions import Corrupter
from workers.evaluate.dataset import select
from workers.evaluate.predictions import decoded_pixels, predict
from workers.predict import evaluate_checkpoint, load_checkpoint, predict_images


def test_logits_are_what_predict_and_the_test_score_say(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    selection = select(loaded)
    pixels = decoded_pixels(loaded, selection)
    got = predict(loaded, selection, pixels, batch_size=50)  # batches of another size
    assert got.logits.shape == (len(selection), 10) and got.logits.dtype == np.float32
    np.testing.assert_array_equal(got.labels, selection.labels[selection.indices])
    first = [selection.index.paths[i] for i in selection.indices[:20]]
    expected = predict_images(loaded, first)
    want = np.array([[p.probabilities[c] for c in loaded.classes] for p in expected])
    np.testing.assert_allclose(got.probabilities()[:20], want, atol=1e-5)
    accuracy = float((got.logits.argmax(1) == got.labels).mean())
    assert accuracy == pytest.approx(evaluate_checkpoint(loaded)["test_accuracy"], abs=1e-6)


def test_a_corruption_reaches_the_model_and_repeats_with_its_seed(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    selection = select(loaded)
    pixels = decoded_pixels(loaded, selection)
    clean = predict(loaded, selection, pixels)
    noisy = [predict(loaded, selection, pixels, Corrupter("gaussian_noise", 3, seed=5))
             for _ in range(2)]
    np.testing.assert_array_equal(noisy[0].logits, noisy[1].logits)
    assert np.abs(noisy[0].logits - clean.logits).mean() > 0.1
