"""The configuration of one fine-tuning trial.

A plain dataclass rather than a pydantic model: the trial engine must run on a GPU box that has
only torch, torchvision, timm, torchmetrics, safetensors, numpy and Pillow installed (DESIGN.md).
The control plane validates job specs with pydantic and hands the engine a flat dict; this module
checks that dict once more so the engine never starts a trial it cannot finish.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.errors import UserError

# in the order the default search space offers them (a study's choices keep their order)
OPTIMIZERS = ("adamw", "sgd", "adam")
SCHEDULES = ("cosine", "step", "multistep", "onecycle", "cyclic", "plateau", "constant")
AUGMENTS = ("none", "basic", "randaugment", "trivialaugment", "autoaugment")
# how the teacher's signal reaches the student: the teacher run on each augmented student batch,
# or its logits computed once per training image (the eval crop) before the first epoch
DISTILL_TARGETS = ("consistent", "cached")
OBJECTIVES = (
    "val_accuracy",
    "val_loss",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_auroc",
)


MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
MIN_IMG_SIZE, MAX_IMG_SIZE = 8, 1024  # the largest pretrained timm input is 800 px
MAX_LOADER_WORKERS = 64
# images x pixels of one batch: 1024 images at 512 px, 256 at the largest side (several GB of
# activations already); each bound alone would allow billions
MAX_BATCH_PIXELS = 2**28


class ConfigError(UserError, ValueError):
    """A trial configuration the engine cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split."""

    source: str = "builtin:digits"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    # parquet/arrow tables only; None: chosen from the table's metadata and column names
    image_column: str | None = None
    label_column: str | None = None

    def validate(self) -> None:
        for name in ("image_column", "label_column"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(f"{name} is empty; name a column, or leave it out to choose one")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value} must be in [0, 1)")
        if self.val_fraction <= 0.0:
            raise ConfigError("val_fraction must be > 0: the search needs a validation split")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves no training images; keep their sum below 1 (e.g. 0.15 + 0.15)"
            )


@dataclass(frozen=True)
class TrialConfig:
    """Every knob of one fine-tuning run. Defaults give a sane AdamW + cosine fine-tune."""

    # model
    backbone: str = "resnet10t"
    pretrained: bool | str = False  # True: timm hub; a path: local .safetensors/.pth file
    img_size: int | None = None  # None: the backbone's pretrained input size
    freeze_stages: int | Literal["all"] = 0  # first k of timm's coarse groups; "all" = linear probe
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # optimizer (timm.optim)
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.05
    layer_decay: float | None = None
    clip_grad: float | None = None
    # learning-rate schedule, stepped once per epoch
    schedule: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: int = 10  # step: decay every n epochs
    decay_rate: float = 0.1  # step, multistep, plateau
    milestones: tuple[int, ...] = (30, 60, 90)  # multistep
    cycle_epochs: int = 4  # cyclic: epochs per half cycle
    plateau_patience: int = 2
    # augmentation and regularization
    augment: str = "basic"
    crop_min_scale: float = 0.25  # RandomResizedCrop's smallest area; milder than ImageNet's 0.08
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    label_smoothing: float = 0.0
    # distillation: a frozen teacher's softened outputs as targets beside the labels
    teacher: str | None = None  # its checkpoint directory (a trial's best/, an `automl pull`)
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5  # weight of the teacher's term; 1 - alpha weighs the labels'
    distill_targets: str = "consistent"  # or "cached": one teacher pass per image in all
    # loop
    batch_size: int = 64
    epochs: int = 10
    patience: int | None = None  # early stopping on the objective, in epochs
    objective: str = "val_accuracy"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    seed: int = 0
    num_workers: int | None = None  # None: one per available CPU, at most 8
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def maximize(self) -> bool:
        return self.objective != "val_loss"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from a flat dict (Ray Tune config, CLI --set), refusing unknown keys."""
        values = dict(values)
        data_keys = {f.name for f in dataclasses.fields(DataConfig)}
        data_values = dict(values.pop("data", None) or {})
        for key in list(values):
            if key in data_keys:
                data_values[key] = values.pop(key)
        known = {f.name for f in dataclasses.fields(cls)} | data_keys
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown trial setting {key!r}{_did_you_mean(key, known)}")
        hints = typing.get_type_hints(cls)
        coerced = {key: _coerce(key, value, hints[key]) for key, value in values.items()}
        data_hints = typing.get_type_hints(DataConfig)
        for key in data_values:
            if key not in data_keys:
                raise ConfigError(f"unknown data setting {key!r}{_did_you_mean(key, data_keys)}")
        data = DataConfig(**{k: _coerce(k, v, data_hints[k]) for k, v in data_values.items()})
        config = cls(**coerced, data=data)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    def replace(self, **changes: Any) -> TrialConfig:
        merged = self.to_dict()
        merged.update(changes)
        return TrialConfig.from_dict(merged)

    def validate(self) -> None:
        """Every setting within what a trial can run: a value past these bounds is a typo or an
        attempt to exhaust the machine (a million-pixel image side, 100,000 loader processes)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}={value} is not a finite number")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("augment", self.augment, AUGMENTS)
        _choice("objective", self.objective, OBJECTIVES)
        _within("lr", self.lr, 0.0, 10.0, low_open=True)
        _within("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        _within("epochs", self.epochs, 1, MAX_EPOCHS)
        if self.img_size is not None:
            _within("img_size", self.img_size, MIN_IMG_SIZE, MAX_IMG_SIZE)
            if self.batch_size * self.img_size**2 > MAX_BATCH_PIXELS:
                raise ConfigError(
                    f"batch_size x img_size: {self.batch_size} images of {self.img_size}x"
                    f"{self.img_size} px are {self.batch_size * self.img_size**2:,} pixels a "
                    f"batch, over {MAX_BATCH_PIXELS:,} (2**28); lower batch_size or img_size"
                )
        if isinstance(self.freeze_stages, int) and not 0 <= self.freeze_stages <= 100:
            raise ConfigError("freeze_stages must be 0..100 or 'all'")
        for name in (
            "drop_rate",
            "drop_path_rate",
            "label_smoothing",
            "mixup_prob",
            "crop_min_scale",
            "momentum",
        ):
            _within(name, getattr(self, name), 0.0, 1.0)
        for name in ("weight_decay", "mixup_alpha", "cutmix_alpha", "min_lr", "warmup_lr"):
            _within(name, getattr(self, name), 0.0, 10.0)
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs})"
            )
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer_decay={self.layer_decay} must be in (0, 1]")
        if self.clip_grad is not None:
            _within("clip_grad", self.clip_grad, 0.0, 1e6, low_open=True)
        _within("ra_num_ops", self.ra_num_ops, 0, 10)
        if not 0 <= self.ra_magnitude <= 30:
            raise ConfigError(f"ra_magnitude={self.ra_magnitude} must be in [0, 30]")
        if not 0.0 < self.decay_rate < 1.0:  # 1 would never decay (and plateau refuses it)
            raise ConfigError(f"decay_rate={self.decay_rate} must be in (0, 1): the factor each "
                              "decay multiplies the lr by (for no decay, schedule: constant)")
        for name in ("decay_epochs", "cycle_epochs", "plateau_patience"):
            _within(name, getattr(self, name), 1, MAX_EPOCHS)
        for milestone in self.milestones:
            _within("milestones", milestone, 1, MAX_EPOCHS)
        if len(self.milestones) > 100:
            raise ConfigError(f"milestones: {len(self.milestones)} of them (at most 100)")
        if self.teacher is not None and not self.teacher.strip():
            raise ConfigError("teacher is empty; name the teacher's checkpoint directory, or "
                              "leave it out to train on the labels alone")
        _within("distill_temperature", self.distill_temperature, 1.0, 20.0)
        _within("distill_alpha", self.distill_alpha, 0.0, 1.0)
        _choice("distill_targets", self.distill_targets, DISTILL_TARGETS)
        if self.patience is not None:
            _within("patience", self.patience, 1, MAX_EPOCHS)
        _within("seed", self.seed, 0, 2**31 - 1)
        if self.num_workers is not None:
            _within("num_workers", self.num_workers, 0, MAX_LOADER_WORKERS)
        self.data.validate()


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _within(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if value < low or value > high or (low_open and value == low):
        opening = "(" if low_open else "["
        raise ConfigError(f"{name}={value} must be in {opening}{low:g}, {high:g}]")


def _did_you_mean(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{hint} (known: {', '.join(sorted(known))})"


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Accept what YAML, JSON or a command line produce, reject anything else by name."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        converted = _convert(value, option)
        if converted is not _NO:
            return converted
    wanted = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{name}={value!r} has the wrong type: expected {wanted}")


_NO = object()


def _convert(value: Any, option: Any) -> Any:
    origin = typing.get_origin(option)
    if origin is Literal:
        return value if value in typing.get_args(option) else _NO
    if origin is tuple:
        if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
            return tuple(value)
        return _NO
    if option is bool:
        return value if isinstance(value, bool) else _NO
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if option is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _NO
    if option is str:
        return value if isinstance(value, str) else _NO
    return _NO


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(option: Any) -> str:
    if typing.get_origin(option) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(option))
    return getattr(option, "__name__", str(option))
