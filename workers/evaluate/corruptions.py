"""The corruption suite: shifted conditions applied to uint8 eval crops (NCHW, any device)
before they are normalized, after ImageNet-C (Hendrycks & Dietterich 2019) at three of its
severities.

| corruption | severity 1, 2, 3 |
| --- | --- |
| gaussian_noise | sigma 0.08, 0.18, 0.38 of the pixel range (ImageNet-C's severities 1, 3, 5) |
| gaussian_blur | sigma 1, 2, 3 px times max(crop side / 224, 0.4): 1, 2, 3 px at 224 px |
| brightness | + 0.1, 0.3, 0.5 of the pixel range (ImageNet-C's 1, 3, 5, there on HSV value) |
| contrast | distance from the mean grey times 0.4, 0.2, 0.05 (ImageNet-C's 1, 3, 5) |
| jpeg | JPEG quality 25, 15, 7 (ImageNet-C's 1, 3, 5) |
| rotate_scale | rotated by 10, 20, 30 degrees (sign drawn per image), scaled by 0.9, 0.8, 0.7 |

Deterministic: a `Corrupter` draws its randomness (noise, rotation signs) on the CPU from one
generator seeded by (seed, corruption, severity) and consumed batch after batch, so the same
seed over the same images in the same batches gives identical pixels on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

SEVERITIES = (1, 2, 3)
_NOISE = (0.08, 0.18, 0.38)
_BLUR = (1.0, 2.0, 3.0)
_BRIGHTNESS = (0.1, 0.3, 0.5)
_CONTRAST = (0.4, 0.2, 0.05)
_JPEG = (25, 15, 7)
_ROTATE = ((10.0, 0.9), (20.0, 0.8), (30.0, 0.7))

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def gaussian_noise(images: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    sigma = _NOISE[severity - 1] * 255.0
    noise = torch.randn(images.shape, generator=rng).to(images.device)
    return _to_uint8(images.float() + noise * sigma)


def gaussian_blur(images: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    sigma = _BLUR[severity - 1] * max(images.shape[-1] / 224.0, 0.4)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def brightness(images: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    return _to_uint8(images.float() + _BRIGHTNESS[severity - 1] * 255.0)


def contrast(images: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    return F.adjust_contrast(images, _CONTRAST[severity - 1])


def jpeg(images: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    encoded = encode_jpeg(list(images.cpu()), quality=_JPEG[severity - 1])
    return torch.stack(decode_jpeg(encoded)).to(images.device)


def rotate_scale(images: torch.Tensor, severity: int, rng: torch.Generator) -> torch.Tensor:
    angle, scale = _ROTATE[severity - 1]
    clockwise = torch.rand(len(images), generator=rng) < 0.5
    out = images.clone()
    for sign, members in ((-1.0, clockwise), (1.0, ~clockwise)):
        if members.any():
            picked = members.to(images.device)
            out[picked] = F.affine(images[picked], angle=sign * angle, translate=[0, 0],
                                   scale=scale, shear=[0.0, 0.0],
                                   interpolation=InterpolationMode.BILINEAR)
    return out


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "brightness": brightness,
    "contrast": contrast,
    "jpeg": jpeg,
    "rotate_scale": rotate_scale,
}


class Corrupter:
    """One corruption at one severity, for a stream of batches: `device_batches`'s augment."""

    def __init__(self, name: str, severity: int, seed: int = 0) -> None:
        if name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity {severity} is not one of {SEVERITIES}")
        self.name, self.severity = name, severity
        position = list(CORRUPTIONS).index(name)
        self.rng = torch.Generator().manual_seed(seed * 1009 + position * 31 + severity)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"corruptions take uint8 images, not {images.dtype}")
        return CORRUPTIONS[self.name](images, self.severity, self.rng)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """One batch corrupted, as the first batch of a `Corrupter(name, severity, seed)`."""
    return Corrupter(name, severity, seed)(images)


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)
