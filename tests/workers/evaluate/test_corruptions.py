"""Each corruption is deterministic given its seed, changes the images, and more so at a
higher severity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from workers.evaluate.corruptions import CORRUPTIONS, SEVERITIES, Corrupter, corrupt


def pictures(n: int = 6, size: int = 48) -> torch.Tensor:
    """Drawn shapes on mid-grey backgrounds: edges to blur, colours to shift, room to clip."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 160, 3)))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(4, size // 2, 2))
        draw.rectangle((x, y, x + size // 3, y + size // 4),
                       fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw.ellipse((size // 2, size // 2, size - 4, size - 6), fill=(250, 250, 250))
        out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(out)


def change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corruption_is_deterministic_and_grows_with_severity(name: str) -> None:
    images = pictures()
    changes = []
    for severity in SEVERITIES:
        first = corrupt(images, name, severity, seed=7)
        assert first.dtype == torch.uint8 and first.shape == images.shape
        assert torch.equal(first, corrupt(images, name, severity, seed=7))
        changes.append(change(first, images))
    assert changes[0] > 0.2, changes  # it does change the images
    assert changes[0] < changes[1] < changes[2], changes
    assert torch.equal(images, pictures())  # the input is left alone


def test_a_corrupter_is_deterministic_batch_after_batch_and_the_seed_matters() -> None:
    images = pictures(8)
    for name in ("gaussian_noise", "rotate_scale"):
        a, b = Corrupter(name, 2, seed=1), Corrupter(name, 2, seed=1)
        assert all(torch.equal(a(images[i : i + 4]), b(images[i : i + 4])) for i in (0, 4))
        first = Corrupter(name, 2, seed=1)(images)
        assert not torch.equal(first, Corrupter(name, 2, seed=2)(images))


def test_a_corrupter_refuses_what_is_not_a_uint8_batch_or_a_known_corruption() -> None:
    with pytest.raises(TypeError, match="uint8"):
        Corrupter("contrast", 1)(pictures().float())
    with pytest.raises(ValueError, match="unknown corruption"):
        Corrupter("fog", 1)
    with pytest.raises(ValueError, match="severity"):
        Corrupter("contrast", 5)
