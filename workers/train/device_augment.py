"""The training policies on the trial's device: batched uint8 tensors, each sample its own draw.

A torchvision v2 transform applied to a batch tensor draws one set of random parameters for the
whole batch: one crop box, one flip, one RandAugment operation for 256 images. That is not the
same policy. Here the random parameters are drawn per sample on the host (a few numbers each,
from the epoch's seeded generator, with torchvision's own sampling rules and magnitude tables),
and the pixel work runs batched on the device:

- RandomResizedCrop: torchvision's box sampling per sample; `torchvision.ops.roi_align` resamples
  every sample's box to `img_size` in one call (one bilinear sample per output pixel when
  enlarging, an average of ceil(box/out)^2 when shrinking, like antialiased resizing);
- horizontal flip: the samples that drew it, flipped together;
- RandAugment, TrivialAugmentWide, AutoAugment: each sample draws its own operations and
  magnitudes; samples are grouped by operation and each operation runs once per group with
  per-sample magnitudes, computing what torchvision's functional op computes for each image.

Why: the CPU policies run at a few hundred images/s per core (`automl bench loader`), so a GPU
that trains thousands of images/s would need more cores than a GPU node has per GPU. With this
path the CPU loader only slices the cached square.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from workers.config import TrialConfig

DEVICE_POLICIES = ("basic", "randaugment", "trivialaugment", "autoaugment")
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect ratios, as the CPU path
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_AUTO_AUGMENT_BINS = 10  # torchvision's AutoAugment reads its magnitudes from 10 bins
# torchvision's private names read here (each policy's op table, AutoAugment's sub-policies):
# tests/search/test_optuna_private_names.py checks them against the installed torchvision, so
# an upgrade that moves one fails there, naming it, instead of inside a trial
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "torchvision.transforms.v2.RandAugment": ("_AUGMENTATION_SPACE",),
    "torchvision.transforms.v2.TrivialAugmentWide": ("_AUGMENTATION_SPACE",),
    "torchvision.transforms.v2.AutoAugment": ("_AUGMENTATION_SPACE", "_policies"),
}


@dataclass(frozen=True)
class Step:
    """One policy step for a batch: each sample's op, its signed magnitude, whether it runs."""

    ops: np.ndarray  # (n,) index into DeviceAugment.ops
    magnitudes: np.ndarray  # (n,) 0 where the op takes none
    applied: np.ndarray  # (n,) bool: AutoAugment runs each op with its own probability


@dataclass(frozen=True)
class Draws:
    """Every random choice for one batch, drawn per sample on the host."""

    boxes: np.ndarray  # (n, 4) crop boxes x1, y1, x2, y2 in stored-square pixels
    flips: np.ndarray  # (n,) bool
    steps: tuple[Step, ...]


class DeviceAugment:
    """`train_transform`'s policy for whole batches: uint8 (B, 3, S, S) -> uint8 (B, 3, n, n)."""

    def __init__(self, config: TrialConfig, img_size: int) -> None:
        if config.augment not in DEVICE_POLICIES:
            raise ValueError(f"augment={config.augment!r} has no device path")
        self.policy, self.img_size = config.augment, img_size
        self.scale = (config.crop_min_scale, 1.0)
        self.num_ops, self.magnitude = config.ra_num_ops, config.ra_magnitude
        space: dict[str, tuple[Callable[..., torch.Tensor | None], bool]]
        bins = 31
        self.policies: list[tuple[tuple[str, float, int | None], ...]] = []
        if self.policy == "autoaugment":
            auto = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
            space, bins = auto._AUGMENTATION_SPACE, _AUTO_AUGMENT_BINS
            self.policies = auto._policies
        elif self.policy == "trivialaugment":
            space = v2.TrivialAugmentWide._AUGMENTATION_SPACE
        else:
            space = v2.RandAugment._AUGMENTATION_SPACE
        self.ops = tuple(space)
        self.signed = np.array([space[name][1] for name in self.ops])
        # magnitudes[op, bin]; NaN where the op takes none (the op then gets 0, as torchvision)
        table = np.full((len(self.ops), bins), np.nan)
        for k, name in enumerate(self.ops):
            values = space[name][0](bins, img_size, img_size)
            if values is not None:
                table[k] = values.double().numpy()
        self.table = table

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n, _, height, width = images.shape
        return self.apply(images, self.draw(n, height, width, rng))

    def draw(self, n: int, height: int, width: int, rng: np.random.Generator) -> Draws:
        """Each sample's crop box, flip, and policy ops, by torchvision's rules for one image."""
        boxes = random_resized_boxes(n, height, width, self.scale, rng)
        flips = rng.random(n) < 0.5
        steps: list[Step] = []
        everyone = np.ones(n, bool)
        if self.policy == "randaugment":
            for _ in range(self.num_ops):
                ops = rng.integers(len(self.ops), size=n)
                steps.append(self._step(ops, self.table[ops, self.magnitude], everyone, rng))
        elif self.policy == "trivialaugment":
            ops = rng.integers(len(self.ops), size=n)
            bins = rng.integers(self.table.shape[1], size=n)
            steps.append(self._step(ops, self.table[ops, bins], everyone, rng))
        elif self.policy == "autoaugment":
            chosen = rng.integers(len(self.policies), size=n)
            for stage in range(2):
                picked = [self.policies[p][stage] for p in chosen]
                ops = np.array([self.ops.index(name) for name, _, _ in picked])
                applied = rng.random(n) <= np.array([p for _, p, _ in picked])
                bins = np.array([0 if m is None else m for _, _, m in picked])
                steps.append(self._step(ops, self.table[ops, bins], applied, rng))
        return Draws(boxes, flips, tuple(steps))

    def _step(
        self, ops: np.ndarray, magnitudes: np.ndarray, applied: np.ndarray, rng: np.random.Generator
    ) -> Step:
        magnitudes = np.where(np.isnan(magnitudes), 0.0, magnitudes)
        negate = self.signed[ops] & (rng.random(len(ops)) <= 0.5)
        return Step(ops, np.where(negate, -magnitudes, magnitudes), applied)

    def apply(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        batch = self.crop(images, draws.boxes)
        flipped = np.flatnonzero(draws.flips)
        if len(flipped):
            index = _to(batch.device, flipped)
            batch.index_copy_(0, index, batch.index_select(0, index).flip(-1))
        for step in draws.steps:
            self._apply(batch, step)
        return batch

    def crop(self, images: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
        """Each sample's box of its stored square, resampled to img_size in one roi_align."""
        rois = np.column_stack([np.arange(len(boxes)), boxes]).astype(np.float32)
        out = roi_align(
            images.float(),
            _to(images.device, rois),
            output_size=self.img_size,
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def _apply(self, batch: torch.Tensor, step: Step) -> None:
        """Every sample its own op and magnitude; each op runs once, on the samples that drew it."""
        groups = [
            (name, np.flatnonzero(step.applied & (step.ops == k)))
            for k, name in enumerate(self.ops)
            if name != "Identity"
        ]
        groups = [(name, members) for name, members in groups if len(members)]
        if not groups:
            return
        # one host-to-device copy per step: every group's members and parameters, concatenated
        height, width = batch.shape[-2:]
        members = np.concatenate([m for _, m in groups])
        params = np.concatenate(
            [_params(name, step.magnitudes[m], height, width) for name, m in groups]
        )
        index_all = _to(batch.device, members)
        params_all = _to(batch.device, params.astype(np.float32))
        start = 0
        for name, group in groups:
            stop = start + len(group)
            index = index_all[start:stop]
            batch.index_copy_(
                0, index, _OPS[name](batch.index_select(0, index), params_all[start:stop])
            )
            start = stop


def random_resized_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """(n, 4) boxes x1, y1, x2, y2 drawn as torchvision's RandomResizedCrop draws one: up to 10
    tries of an area and a log-uniform aspect ratio that fit, else the whole (square) image."""
    area = height * width
    tries = 10
    target = area * rng.uniform(scale[0], scale[1], size=(n, tries))
    ratio = np.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1]), size=(n, tries)))
    w = np.round(np.sqrt(target * ratio)).astype(np.int64)
    h = np.round(np.sqrt(target / ratio)).astype(np.int64)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    w, h = w[rows, first], h[rows, first]
    found = fits[rows, first]
    w, h = np.where(found, w, width), np.where(found, h, height)
    top = np.floor(rng.random(n) * (height - h + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (width - w + 1)).astype(np.int64)
    top, left = np.where(found, top, (height - h) // 2), np.where(found, left, (width - w) // 2)
    return np.column_stack([left, top, left + w, top + h]).astype(np.float64)


def _to(device: torch.device, values: np.ndarray) -> torch.Tensor:
    """Host parameters to the device; pinned first on CUDA, so the copy does not wait on it."""
    tensor = torch.from_numpy(values)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _params(name: str, magnitudes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 6) per-sample parameters: an inverse affine matrix for the geometric ops (as
    torchvision builds it for that op), else the magnitude, 1 + magnitude and its complement."""
    out = np.zeros((len(magnitudes), 6))
    if name not in _GEOMETRIC:
        # blends weigh by 1 + m and m's complement; computed here in float64, as torchvision
        # computes its Python-float factors, so float32 rounding lands where its does
        out[:, 0], out[:, 1], out[:, 2] = magnitudes, 1.0 + magnitudes, -magnitudes
        return out
    zero = np.zeros_like(magnitudes)
    if name == "ShearX":  # about the top-left corner (center=[0, 0]), as torchvision's op
        return _inverse_affine(zero, zero, zero, np.arctan(magnitudes), zero, -width / 2, -height / 2)
    if name == "ShearY":
        return _inverse_affine(zero, zero, zero, zero, np.arctan(magnitudes), -width / 2, -height / 2)
    if name == "TranslateX":
        return _inverse_affine(zero, np.trunc(magnitudes), zero, zero, zero, 0.0, 0.0)
    if name == "TranslateY":
        return _inverse_affine(zero, zero, np.trunc(magnitudes), zero, zero, 0.0, 0.0)
    # Rotate: torchvision's rotate builds the inverse of an affine by -angle about the center
    return _inverse_affine(np.radians(-magnitudes), zero, zero, zero, zero, 0.0, 0.0)


def _inverse_affine(
    rot: np.ndarray,
    tx: np.ndarray,
    ty: np.ndarray,
    shear_x: np.ndarray,
    shear_y: np.ndarray,
    cx: float,
    cy: float,
) -> np.ndarray:
    """torchvision's `_get_inverse_affine_matrix` (scale 1), vectorized; angles in radians,
    center relative to the image center, in pixels."""
    cos_sy, tan_sx = np.cos(shear_y), np.tan(shear_x)
    a = np.cos(rot - shear_y) / cos_sy
    b = -(a * tan_sx + np.sin(rot))
    c = np.sin(rot - shear_y) / cos_sy
    d = np.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return np.column_stack([m0, m1, m2, m3, m4, m5])


def _affine(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp, zeros outside: torchvision's tensor affine, one matrix a sample."""
    n, _, height, width = images.shape
    theta = params.view(n, 2, 3)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=images.device)
    planes = [xs.expand(height, width), ys[:, None].expand(height, width)]
    base = torch.stack([*planes, torch.ones_like(planes[0])], dim=-1).view(1, height * width, 3)
    scale = torch.tensor([0.5 * width, 0.5 * height], device=images.device)
    grid = base.matmul(theta.transpose(1, 2) / scale).view(n, height, width, 2)
    warped = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped.round_().to(torch.uint8)


def _factor(params: torch.Tensor) -> torch.Tensor:
    return params[:, 1].view(-1, 1, 1, 1)


def _complement(params: torch.Tensor) -> torch.Tensor:
    return params[:, 2].view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """torchvision's `_blend` with ratio 1 + magnitude, a ratio per sample."""
    mixed = images.float().mul_(_factor(params)).add_(other * _complement(params))
    return mixed.clamp_(0, 255).to(torch.uint8)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(-3)


def _brightness(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return (images.float() * _factor(params)).clamp_(0, 255).to(torch.uint8)


def _color(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return _blend(images, _gray(images), params)


def _contrast(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    mean = _gray(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, params)


def _sharpness(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], device=images.device)
    output = images.float()
    blurred = F.conv2d(output, kernel.expand(3, 1, 3, 3), groups=3).round_()
    inner = output[..., 1:-1, 1:-1]
    inner.add_((blurred - inner) * _complement(params))
    return output.clamp_(0, 255).to(torch.uint8)


def _posterize(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    bits = params[:, 0].long().clamp(0, 8)
    ones = torch.ones_like(bits)
    mask = torch.bitwise_left_shift(torch.bitwise_left_shift(ones, bits) - 1, 8 - bits)
    return images & mask.to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    threshold = (255.0 * params[:, 0]).view(-1, 1, 1, 1)
    return torch.where(images >= threshold, 255 - images, images)


_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    **dict.fromkeys(_GEOMETRIC, _affine),
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda images, _: TF.autocontrast(images),  # per image already
    "Equalize": lambda images, _: TF.equalize(images),
    "Invert": lambda images, _: TF.invert(images),
}
