"""The GPU path of the augmentation policies: batched on the device, each sample its own draw.

These run on the CPU (CI has no GPU): the device code is plain torch, the same on either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from workers.config import TrialConfig
from workers.train.device import Acceleration
from workers.train.device_augment import _OPS, DEVICE_POLICIES, DeviceAugment, _params
from workers.train.loop import train


def photos(n: int, side: int = 48, seed: int = 0) -> torch.Tensor:
    """Structured uint8 images (gradients plus noise, one dark half): every op shows on them."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side)
    base = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.outer(ramp, np.ones(side)), 255 - ramp[None].repeat(side, 0)]
    )
    images = base[None] + rng.normal(0, 20, size=(n, 3, side, side))
    images[:, :, :, : side // 2] /= 3
    return torch.from_numpy(images.clip(0, 255).astype(np.uint8))


def reference(policy: str) -> v2.Transform:
    """torchvision's own transform, whose per-image op the device ops must reproduce."""
    if policy == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    return v2.TrivialAugmentWide() if policy == "trivialaugment" else v2.RandAugment()


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment", "autoaugment"])
def test_each_device_op_computes_torchvisions_op_on_each_image(policy: str) -> None:
    augment = DeviceAugment(TrialConfig(augment=policy), 40)
    tv = reference(policy)
    rng = np.random.default_rng(1)
    images = photos(12, side=40)
    for k, name in enumerate(augment.ops):
        magnitudes = augment.table[k, rng.integers(augment.table.shape[1], size=12)]
        magnitudes = np.nan_to_num(magnitudes) * np.where(augment.signed[k] & (rng.random(12) < 0.5), -1, 1)
        params = torch.from_numpy(_params(name, magnitudes, 40, 40).astype(np.float32))
        ours = images.clone() if name == "Identity" else _OPS[name](images.clone(), params)
        theirs = torch.stack([
            tv._apply_image_or_video_transform(
                image, name, float(m), interpolation=v2.InterpolationMode.NEAREST, fill=tv._fill
            )
            for image, m in zip(images, magnitudes, strict=True)
        ])
        diff = (ours.int() - theirs.int()).abs()
        # float rounding of a blend can land one level apart, on a pixel in a thousand
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.005, name


@pytest.mark.parametrize("policy", DEVICE_POLICIES)
def test_every_sample_gets_its_own_draws_in_its_own_place(policy: str) -> None:
    """Each output is torchvision's chain for that sample's own draws (crop box, flip, ops) on
    that sample's own image: nothing moves between samples, so labels stay with their images."""
    augment = DeviceAugment(TrialConfig(augment=policy, ra_magnitude=15), 32)
    images = photos(16)
    draws = augment.draw(16, 48, 48, np.random.default_rng(2))
    out = augment.apply(images, draws)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.uint8
    tv = reference(policy)
    for i in range(16):
        x1, y1, x2, y2 = (int(v) for v in draws.boxes[i])
        expected = TF.resized_crop(images[i], y1, x1, y2 - y1, x2 - x1, [32, 32], antialias=True)
        # roi_align's resampling is within a level or so of torchvision's antialiased resize
        crop = augment.crop(images[i : i + 1], draws.boxes[i : i + 1])[0]
        assert (crop.float() - expected.float()).abs().mean() < 1.5
        chain = crop.flip(-1) if draws.flips[i] else crop
        for step in draws.steps:
            if step.applied[i]:
                chain = tv._apply_image_or_video_transform(
                    chain, augment.ops[step.ops[i]], float(step.magnitudes[i]),
                    interpolation=v2.InterpolationMode.NEAREST, fill=tv._fill,
                )
        assert (out[i].int() - chain.int()).abs().max() <= 1, i


def test_one_image_repeated_gets_many_crops_and_flips() -> None:
    """torchvision's v2 on a batch tensor gives every sample the same crop and flip; a batch of
    one image repeated must come out varied, about half of it mirrored."""
    batch = photos(1).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    same_for_all = v2.Compose([v2.RandomResizedCrop(32, scale=(0.25, 1.0)), v2.RandomHorizontalFlip()])(batch)
    assert len({tuple(x.flatten().tolist()) for x in same_for_all}) == 1
    augment = DeviceAugment(TrialConfig(augment="basic"), 32)
    draws = augment.draw(64, 48, 48, np.random.default_rng(3))
    out = augment.apply(batch, draws)
    assert len({tuple(x.flatten().tolist()) for x in out}) == 64
    assert 16 <= draws.flips.sum() <= 48
    widths = draws.boxes[:, 2] - draws.boxes[:, 0]
    assert widths.min() < 0.75 * 48 and widths.max() > 0.9 * 48  # scale=(0.25, 1) spans sizes


def test_ops_vary_within_a_batch() -> None:
    draws = DeviceAugment(TrialConfig(augment="trivialaugment"), 32).draw(
        256, 48, 48, np.random.default_rng(4)
    )
    assert len(np.unique(draws.steps[0].ops)) == 14  # every op of the space, in one batch
    assert len(np.unique(draws.steps[0].magnitudes)) > 50


def test_gpu_trials_augment_on_the_device_and_cpu_trials_in_the_loader() -> None:
    config = TrialConfig()
    assert Acceleration.for_device(torch.device("cuda"), config).augment_on_device
    assert not Acceleration.for_device(torch.device("cpu"), config).augment_on_device


@pytest.mark.parametrize("policy", ["basic", "randaugment"])
def test_a_trial_learns_with_the_device_policies(tmp_path: Path, policy: str) -> None:
    config = TrialConfig.from_dict({
        "backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3, "epochs": 3,
        "augment": policy,
    })
    summary = train(config, tmp_path, acceleration=Acceleration(augment_on_device=True))
    assert summary.best_value >= 0.5  # ten digits: chance is 0.1
