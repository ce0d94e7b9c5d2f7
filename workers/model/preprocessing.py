"""What a backbone's input looks like: timm's default input size, crop and interpolation for it,
looked up in one place, and the stored square the decoded cache keeps (timm's eval resize)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """What a checkpoint's user needs to feed the model exactly as in training's evaluation."""

    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(
            img_size=int(values["img_size"]),
            crop_pct=float(values["crop_pct"]),
            interpolation=str(values["interpolation"]),
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
        )


@functools.cache
def data_config(backbone: str) -> dict[str, Any]:
    """timm's data config for `backbone` (input size, crop, interpolation, mean, std) from its
    pretrained config, as `timm.data.resolve_data_config` gives it for a created model; once
    per backbone and process."""
    import timm

    cfg = timm.models.get_pretrained_cfg(backbone)
    pretrained = cfg.to_dict() if cfg is not None else {"input_size": (3, 224, 224)}
    return dict(timm.data.resolve_data_config({}, pretrained_cfg=pretrained))


def default_side(backbone: str) -> int:
    """The side timm's pretrained config gives `backbone`'s input (224 when it gives none)."""
    return int(data_config(backbone)["input_size"][-1])


def preprocessing(backbone: str, img_size: int | None) -> Preprocessing:
    """How `backbone` sees its images at `img_size` (its default side when None)."""
    cfg = data_config(backbone)
    return Preprocessing(
        img_size=img_size or int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
    )


def stored_size(img_size: int, crop_pct: float) -> int:
    """Side of the stored square: timm's eval resize (img_size / crop_pct) before the center crop."""
    return math.floor(img_size / crop_pct)
