"""Every augmentation policy changes images and keeps labels; eval stays deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.config import TrialConfig
from workers.data.loaders import CachedImages
from workers.train.augment import batch_mixer, eval_transform, train_transform


def picture(seed: int = 0) -> np.ndarray:
    """A structured (not flat) 40x40 image, so crops, flips and color ops all show."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 40, dtype=np.float32)
    img = np.stack(
        [np.add.outer(base, base) / 2, np.outer(base, np.ones(40)), rng.uniform(0, 255, (40, 40))]
    )
    return img.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("policy", ["basic", "randaugment", "trivialaugment", "autoaugment"])
def test_policy_changes_images_and_keeps_labels(policy: str) -> None:
    pixels = np.stack([picture(i) for i in range(8)])
    labels = np.arange(8) % 3
    config = TrialConfig(augment=policy, ra_magnitude=15)
    augmented = CachedImages(pixels, labels, np.arange(8), train_transform(config, 32))
    plain = CachedImages(pixels, labels, np.arange(8), eval_transform(32))
    torch.manual_seed(0)
    changed = 0
    for i in range(8):
        image, label = augmented[i]
        reference, ref_label = plain[i]
        assert label == ref_label == labels[i]
        assert image.shape == reference.shape == (3, 32, 32)
        assert image.dtype == torch.uint8
        changed += not torch.equal(image, reference)
    assert changed >= 6


def test_none_policy_is_the_eval_crop() -> None:
    pixels = np.stack([picture()])
    a = CachedImages(
        pixels, np.zeros(1), np.arange(1), train_transform(TrialConfig(augment="none"), 32)
    )
    b = CachedImages(pixels, np.zeros(1), np.arange(1), eval_transform(32))
    assert torch.equal(a[0][0], b[0][0])


def test_randaugment_policy_differs_from_basic() -> None:
    image = torch.from_numpy(picture())
    torch.manual_seed(1)
    basic = train_transform(TrialConfig(augment="basic"), 32)(image)
    torch.manual_seed(1)
    rand = train_transform(TrialConfig(augment="randaugment", ra_magnitude=20), 32)(image)
    assert not torch.equal(basic, rand)


@pytest.mark.parametrize("mix", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}])
def test_mixing_blends_images_and_keeps_label_mass(mix: dict[str, float]) -> None:
    config = TrialConfig(**mix, label_smoothing=0.1)
    mixer = batch_mixer(config, num_classes=3)
    assert mixer is not None
    images = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    labels = torch.tensor([0, 1, 2, 0])
    np.random.seed(3)
    mixed, targets = mixer(images.clone(), labels)
    assert not torch.equal(mixed, images)
    assert targets.shape == (4, 3)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    # the mass sits on the two mixed labels (its own and its flipped partner), smoothing aside
    own = targets[torch.arange(4), labels]
    partner = targets[torch.arange(4), labels.flip(0)]
    assert torch.all(own + partner >= 0.9)


def test_no_mixing_by_default() -> None:
    assert batch_mixer(TrialConfig(), num_classes=3) is None
