"""The override grammar: how a job's `space` narrows or replaces one parameter of the search.

    lr: 0.001                          fixed value (not searched)
    backbone: [resnet50, vit_small]    choices
    lr: {low: 1e-4, high: 1e-2, log: true}     range (int when both ends are ints)

Every parameter of the trial engine (`workers.config.TrialConfig`) can be overridden, including
those the default space leaves alone (img_size, layer_decay, clip_grad, ...); every value an
override can produce is checked with the engine's own validation (and timm, for a backbone).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from workers.config import ConfigError, TrialConfig
from workers.errors import UserError

# settings a job sets elsewhere in its spec, never through the space
NOT_IN_SPACE = {
    "epochs": "budget.max_epochs",
    "objective": "objective.metric",
    "data": "dataset",
    "source": "dataset.source",
    "val_fraction": "dataset.val_fraction",
    "test_fraction": "dataset.test_fraction",
    "split_seed": "dataset.split_seed",
    "image_column": "dataset.image_column",
    "label_column": "dataset.label_column",
}



@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Choices:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None  # ints on both ends make an integer range


Param = Fixed | Choices | Range


class SpaceError(UserError, ValueError):
    """A search-space override the engine could never run; the message names the parameter."""


def parse_override(name: str, raw: Any, max_epochs: int) -> Param:
    """Turn one YAML value into a Fixed, Choices or Range, checking every value it can produce."""
    _check_name(name)
    if isinstance(raw, dict):
        if set(raw) == {"value"}:
            param: Param = Fixed(raw["value"])
        elif set(raw) == {"choices"}:
            param = _choices(name, raw["choices"])
        elif {"low", "high"} <= set(raw) <= {"low", "high", "log", "step"}:
            param = _range(name, raw)
        else:
            raise SpaceError(
                f"space.{name}: expected a value, a list of choices, {{choices: [...]}} or "
                f"{{low, high, log, step}}; got keys {', '.join(sorted(map(str, raw))[:5])}"
            )
    elif isinstance(raw, list):
        param = _choices(name, raw)
    else:
        param = Fixed(raw)
    for value in _probe_values(param):
        _check_value(name, value, max_epochs)
    return param


def _check_name(name: str) -> None:
    if name in NOT_IN_SPACE:
        raise SpaceError(f"space.{name}: set it with {NOT_IN_SPACE[name]}, not in the space")
    known = {f.name for f in dataclasses.fields(TrialConfig)} - set(NOT_IN_SPACE)
    if name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SpaceError(f"space.{name}: unknown parameter{hint} (known: {', '.join(sorted(known))})")


def _choices(name: str, values: Any) -> Choices:
    if not isinstance(values, list) or not values:
        raise SpaceError(f"space.{name}: choices must be a non-empty list")
    return Choices(tuple(values))


def _range(name: str, raw: dict[str, Any]) -> Range:
    low, high = raw["low"], raw["high"]
    if not (is_number(low) and is_number(high)):
        raise SpaceError(f"space.{name}: a range needs numbers for low and high")
    if low >= high:
        raise SpaceError(f"space.{name}: low={low} must be below high={high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"space.{name}: log is true or false")
    if log and low <= 0:
        raise SpaceError(f"space.{name}: a log range needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        integers = isinstance(low, int) and isinstance(high, int)
        if not is_number(step) or not 0 < step <= high - low:
            raise SpaceError(f"space.{name}: step must be a positive number no larger than "
                             f"high - low ({high - low:g})")
        if integers and not isinstance(step, int):
            raise SpaceError(f"space.{name}: an integer range (low and high are integers) "
                             "takes an integer step")
        if log:
            raise SpaceError(f"space.{name}: a log range takes no step; drop one of them")
    return Range(low, high, log, step)


def is_number(value: Any) -> TypeGuard[int | float]:
    """A number, and not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _probe_values(param: Param) -> Sequence[Any]:
    if isinstance(param, Fixed):
        return [param.value]
    if isinstance(param, Choices):
        return list(param.values)
    return [param.low, param.high]


def _check_value(name: str, value: Any, max_epochs: int) -> None:
    """The engine's own validation, applied to this one value (others at their defaults)."""
    try:
        config = TrialConfig.from_dict({"epochs": max_epochs, name: value})
    except ConfigError as error:
        raise SpaceError(f"space.{name}: {error}{_list_hint(name, value)}") from error
    if name == "backbone":
        from workers.model.backbone import check_backbone

        try:
            check_backbone(config.backbone)
        except ConfigError as error:
            raise SpaceError(f"space.{name}: {error}") from error
    # a weights file is not opened here: validation reads no file (paths.check_weights does)


def _list_hint(name: str, value: Any) -> str:
    """`milestones: [1, 2]` reads as two choices, 1 and 2: say how to write one list value."""
    default = next((f.default for f in dataclasses.fields(TrialConfig) if f.name == name), None)
    if not isinstance(default, tuple) or isinstance(value, list | tuple):
        return ""
    example = list(default)
    return (f" (a list in `space` lists the choices, so one {name} value is a list in a list: "
            f"{name}: [{example}])")


def values_of(param: Param) -> tuple[Any, ...]:
    if isinstance(param, Fixed):
        return (param.value,)
    if isinstance(param, Choices):
        return param.values
    raise SpaceError(f"a range ({param.low}..{param.high}) where choices were expected")
