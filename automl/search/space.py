"""The fine-tuning search space: define-by-run over Optuna, narrowed or overridden per parameter.

Conditional parameters stay conditional (RandAugment's magnitude exists only when RandAugment is
chosen, momentum only for SGD): the space is code that asks the trial, never a flattened grid.
A user override (`automl.search.overrides`) replaces a parameter's default distribution wherever
that parameter is asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from automl.search.overrides import (
    Choices,
    Fixed,
    Param,
    Range,
    SpaceError,
    is_number,
    parse_override,
    values_of,
)
from workers.config import AUGMENTS, MAX_BATCH_PIXELS, OPTIMIZERS, SCHEDULES
from workers.model.preprocessing import default_side

# ImageNet-pretrained timm models from phone-size to large ViTs: the Pareto front of timm's models
# over ImageNet accuracy and size chosen by Quick-Tune (Arango et al., ICLR 2024), whose recorded
# fine-tuning runs the replay benchmark uses. Current timm names of the same weights.
DEFAULT_BACKBONES: tuple[str, ...] = (
    "mobilevit_xxs.cvnets_in1k",
    "mobilevit_xs.cvnets_in1k",
    "mobilevitv2_075.cvnets_in1k",
    "edgenext_xx_small.in1k",
    "edgenext_x_small.in1k",
    "edgenext_small.usi_in1k",
    "dla46x_c.in1k",
    "xcit_nano_12_p8_384.fb_dist_in1k",
    "xcit_tiny_12_p8_384.fb_dist_in1k",
    "xcit_tiny_24_p8_384.fb_dist_in1k",
    "xcit_small_12_p8_384.fb_dist_in1k",
    "deit3_small_patch16_384.fb_in22k_ft_in1k",
    "convnext_small.fb_in22k_ft_in1k_384",
    "tf_efficientnet_b4.ns_jft_in1k",
    "tf_efficientnet_b6.ns_jft_in1k",
    "tf_efficientnet_b7.ns_jft_in1k",
    "volo_d1_384.sail_in1k",
    "volo_d3_448.sail_in1k",
    "volo_d4_448.sail_in1k",
    "volo_d5_448.sail_in1k",
    "volo_d5_512.sail_in1k",
    "beit_base_patch16_384.in22k_ft_in22k_in1k",
    "beit_large_patch16_512.in22k_ft_in22k_in1k",
    "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
)
# Default choices and ranges, checked against 2,400 recorded fine-tuning runs (see the replay
# benchmark): linear probing alone is rarely best, deep partial freezing often is; small batches
# do well on small datasets; SGD wants a lower lr than from-scratch training.
FREEZE_STAGES: tuple[int | str, ...] = (0, 1, 2, 3, "all")
BATCH_SIZES = (8, 16, 32, 64, 128)
MIXUP_ALPHAS = (0.0, 0.2, 0.4, 1.0)
CUTMIX_ALPHAS = (0.0, 0.25, 0.5, 1.0)
MIXUP_PROBS = (0.25, 0.5, 1.0)
LR_RANGE = {"sgd": (1e-4, 0.1), "adamw": (1e-5, 1e-2), "adam": (1e-5, 1e-2)}
WEIGHT_DECAY_RANGE = (1e-6, 0.1)


class SearchSpace:
    """The default fine-tuning space with the user's overrides applied."""

    def __init__(self, overrides: dict[str, Param] | None = None, max_epochs: int = 10) -> None:
        self.overrides = dict(overrides or {})
        self.max_epochs = max_epochs

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SearchSpace) and self.overrides == other.overrides
                and self.max_epochs == other.max_epochs)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    @classmethod
    def from_spec(cls, raw: dict[str, Any], max_epochs: int) -> SearchSpace:
        space = cls({k: parse_override(k, v, max_epochs) for k, v in raw.items()}, max_epochs)
        space._check_batch_pixels()
        return space

    def _check_batch_pixels(self) -> None:
        """The largest batch at the largest image side must fit `MAX_BATCH_PIXELS`: each bound
        alone allows batches of billions of pixels, which no worker holds (a side the space
        leaves to the backbone is that backbone's own)."""
        param = self.overrides.get("batch_size", Choices(BATCH_SIZES))
        batch = int(param.high) if isinstance(param, Range) else max(int(v) for v in values_of(param))
        sides = self.img_sizes()
        side = max((s for s in sides if s is not None), default=0)
        if None in sides:
            side = max(side, *(default_side(b) for b in self.backbones()))
        if batch * side * side > MAX_BATCH_PIXELS:
            own = "" if "img_size" in self.overrides else " (the backbone's own: it is unset)"
            raise SpaceError(
                f"space.batch_size: batches of up to {batch} images at space.img_size {side} "
                f"px{own} are {batch * side * side:,} pixels, over {MAX_BATCH_PIXELS:,} (2**28); "
                "lower space.batch_size or space.img_size"
            )

    def backbones(self) -> tuple[str, ...]:
        return values_of(self.overrides.get("backbone", Choices(DEFAULT_BACKBONES)))

    def smallest_img_size(self) -> int | None:
        """The smallest image side a trial may get; None: each backbone's own."""
        sizes = [size for size in self.img_sizes() if size is not None]
        return min(sizes) if sizes else None

    def img_sizes(self) -> tuple[int | None, ...]:
        """The image sides trials may get (a range: its two ends); None: the backbone's own."""
        param = self.overrides.get("img_size")
        if param is None:
            return (None,)
        if isinstance(param, Range):
            return (int(param.low), int(param.high))
        return tuple(None if v is None else int(v) for v in values_of(param))

    def pretrained(self) -> tuple[bool | str, ...]:
        """What trials may load weights from: True (the model hub), a file, or False (none)."""
        return values_of(self.overrides.get("pretrained", Fixed(True)))

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask `trial` for one configuration; returns the engine settings it chose."""
        ask = _Asker(trial, self.overrides)
        c: dict[str, Any] = {"epochs": self.max_epochs}
        c["backbone"] = ask.categorical("backbone", DEFAULT_BACKBONES)
        c["pretrained"] = ask.fixed("pretrained", True)
        c["freeze_stages"] = ask.categorical("freeze_stages", FREEZE_STAGES)
        c["optimizer"] = ask.categorical("optimizer", OPTIMIZERS)
        c["lr"] = ask.float("lr", *LR_RANGE[c["optimizer"]], log=True)
        if c["optimizer"] == "sgd":
            c["momentum"] = ask.float("momentum", 0.8, 0.99)
            c["nesterov"] = ask.categorical("nesterov", (True, False))
        c["weight_decay"] = ask.float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
        c["schedule"] = ask.categorical("schedule", SCHEDULES)
        self._schedule_params(ask, c)
        c["warmup_epochs"] = ask.int("warmup_epochs", 0, max(0, min(5, self.max_epochs // 3)))
        if c["warmup_epochs"] or "warmup_lr" in self.overrides:
            c["warmup_lr"] = ask.fixed("warmup_lr", c["lr"] * 0.1)
        c["augment"] = ask.categorical("augment", AUGMENTS)
        if c["augment"] == "randaugment":
            c["ra_num_ops"] = ask.int("ra_num_ops", 1, 3)
            c["ra_magnitude"] = ask.int("ra_magnitude", 5, 15)
        c["mixup_alpha"] = ask.categorical("mixup_alpha", MIXUP_ALPHAS)
        c["cutmix_alpha"] = ask.categorical("cutmix_alpha", CUTMIX_ALPHAS)
        if c["mixup_alpha"] or c["cutmix_alpha"]:
            c["mixup_prob"] = ask.categorical("mixup_prob", MIXUP_PROBS)
        c["label_smoothing"] = ask.float("label_smoothing", 0.0, 0.2)
        c["drop_path_rate"] = ask.float("drop_path_rate", 0.0, 0.2)
        c["batch_size"] = ask.categorical("batch_size", BATCH_SIZES)
        for name in self.overrides.keys() - c.keys() - _CONDITIONAL:
            c[name] = ask.override(name)  # engine settings the default space does not search
        return c

    def _schedule_params(self, ask: _Asker, c: dict[str, Any]) -> None:
        epochs = self.max_epochs
        if c["schedule"] == "step":
            c["decay_epochs"] = ask.int("decay_epochs", 1, max(1, epochs // 2))
            c["decay_rate"] = ask.float("decay_rate", 0.1, 0.5)
        elif c["schedule"] == "multistep":
            # halfway and three quarters through, each once and never before the end of epoch
            # 1 (over one epoch, both would be epoch 0, which no trial can decay at)
            halfway, three_quarters = max(1, epochs // 2), max(1, (3 * epochs) // 4)
            c["milestones"] = ask.fixed("milestones", sorted({halfway, three_quarters}))
            c["decay_rate"] = ask.float("decay_rate", 0.1, 0.5)
        elif c["schedule"] == "cyclic":
            c["cycle_epochs"] = ask.int("cycle_epochs", 1, max(1, epochs // 2))
        elif c["schedule"] == "plateau":
            c["plateau_patience"] = ask.int("plateau_patience", 1, 3)
            c["decay_rate"] = ask.float("decay_rate", 0.1, 0.5)

    def admits(self, config: dict[str, Any]) -> dict[str, Any]:
        """The part of `config` this space would ask for and could produce (warm starts).

        The space itself is walked with `config`'s answers, so a value is kept only on the branch
        it belongs to and inside the range the space asks there (a warmup longer than this job's
        epochs, a batch size the user narrowed away: dropped, and sampled instead).
        """
        probe = _Probe(config)
        self.sample(probe)  # type: ignore[arg-type]
        return probe.admitted


# parameters the default space asks only under a condition: an override must not force them
_CONDITIONAL = {
    "momentum", "nesterov", "decay_epochs", "decay_rate", "milestones", "cycle_epochs",
    "plateau_patience", "warmup_lr", "ra_num_ops", "ra_magnitude", "mixup_prob",
}


class _Probe:
    """Stands in for an Optuna trial in `SearchSpace.admits`: answers from a configuration."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config: dict[str, Any] = config
        self.admitted: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = _encode(self.config.get(name))
        if name in self.config and value in choices:
            self.admitted[name] = self.config[name]
            return value
        return choices[0]

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> Any:
        return self._number(name, low, high)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> Any:
        return self._number(name, low, high)

    def _number(self, name: str, low: float, high: float) -> Any:
        value = self.config.get(name)
        if is_number(value) and low <= value <= high:
            self.admitted[name] = value
            return value
        return low


class _Asker:
    """Asks the trial for each parameter, through the user's override when there is one."""

    def __init__(self, trial: optuna.Trial, overrides: dict[str, Param]) -> None:
        self.trial, self.overrides = trial, overrides

    def categorical(self, name: str, default: Sequence[Any]) -> Any:
        return self._ask(name, Choices(tuple(default)))

    def float(self, name: str, low: float, high: float, log: bool = False) -> Any:
        return self._ask(name, Range(float(low), float(high), log))

    def int(self, name: str, low: int, high: int) -> Any:
        return self._ask(name, Range(int(low), int(high)))

    def fixed(self, name: str, value: Any) -> Any:
        return self._ask(name, Fixed(value))

    def override(self, name: str) -> Any:
        return self._ask(name, self.overrides[name])

    def _ask(self, name: str, default: Param) -> Any:
        param = self.overrides.get(name, default)
        if isinstance(param, Fixed):
            return param.value
        if isinstance(param, Choices):
            if len(param.values) == 1:
                return param.values[0]
            return _decode(self.trial.suggest_categorical(name, [_encode(v) for v in param.values]))
        if param.low == param.high:
            return param.low
        if isinstance(param.low, int) and isinstance(param.high, int) and not param.log:
            step = int(param.step or 1)
            return self.trial.suggest_int(name, param.low, param.high, step=step)
        if isinstance(param.low, int) and isinstance(param.high, int):
            return self.trial.suggest_int(name, param.low, param.high, log=True)
        return self.trial.suggest_float(
            name, float(param.low), float(param.high), log=param.log, step=param.step
        )


def _encode(value: Any) -> Any:
    """Optuna choices must be None, bool, int, float or str: lists travel as strings."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        return [int(v) for v in value[1:-1].split(",") if v]
    return value
