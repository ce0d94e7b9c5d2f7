"""The backbone: any timm model, its pretrained weights, a new head, frozen stages.

Stages are timm's own coarse parameter groups (`model.group_matcher(coarse=True)`, the same
structure timm uses for layer-wise LR decay), so freeze depth means the same thing for a ResNet,
an EfficientNet and a ViT, without per-architecture code.
"""

from __future__ import annotations

import difflib
import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import group_parameters
from timm.utils import freeze

from workers.config import ConfigError, TrialConfig
from workers.errors import first_line


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
def _all_model_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def check_backbone(name: str) -> None:
    """Refuse an unknown timm name, listing the closest real ones."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, _all_model_names(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"unknown backbone {name!r}: not a timm model name{hint}")


def uncached_hub_weights(backbones: Iterable[str]) -> list[str]:
    """The backbones whose pretrained weights timm would fetch from the Hugging Face Hub and
    that are not in the local Hugging Face cache (HF_HOME). Weights timm gets by URL are not
    checked."""
    from huggingface_hub import try_to_load_from_cache

    missing = []
    for name in backbones:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            continue
        repo, _, revision = cfg.hf_hub_id.partition("@")
        # timm asks for model.safetensors first, then the cfg's file (pytorch_model.bin)
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
            "model.safetensors", "pytorch_model.bin"]
        if not any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str)
                   for f in files):
            missing.append(name)
    return missing


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached from this machine, or None when it answers.

    Any HTTP answer counts: the question is only whether a download could start. Without this
    check a job on a machine with no route to the hub would spend each trial in the hub
    client's retries, for minutes, before failing.
    """
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except httpx.HTTPError as error:
        return f"{constants.ENDPOINT} did not answer ({type(error).__name__}: {error})"
    return None


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def check_weights_file(path: str) -> Path:
    """A local weights file that loads as a state dict, or a ConfigError naming the fix.

    Checked when a job is submitted as well as when a trial loads it: a damaged or pickled file,
    or one that holds something other than a state dict, would otherwise fail every trial on
    the workers, each after its retries. Safetensors files are checked by their header (they
    hold named tensors only); PyTorch files are loaded memory-mapped with `weights_only`, which
    refuses any pickled object that is not a tensor or a plain container, and what they hold
    must be what timm loads: a mapping of names to tensors, or a checkpoint holding one.
    """
    weights = Path(path).expanduser()
    if weights.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(
            f"pretrained weights {weights} must be a {' or '.join(WEIGHT_SUFFIXES)} file "
            "(loaded without pickle)"
        )
    if not weights.is_file():
        raise ConfigError(f"pretrained weights file {weights} does not exist")
    stat = weights.stat()
    _check_weights_content(str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    return weights


@functools.lru_cache(maxsize=64)
def _check_weights_content(path: str, size: int, mtime_ns: int) -> None:
    """Cached by size and modification time: a job's files are checked more than once."""
    import pickle
    import zipfile

    from safetensors import SafetensorError, safe_open

    try:
        if path.endswith(".safetensors"):
            with safe_open(path, framework="pt") as handle:
                names = handle.keys()
            if not names:
                raise ConfigError(f"pretrained weights {path} hold no tensors; save "
                                  "model.state_dict() with safetensors.torch.save_file")
            return
        # mmap reads nothing up front, but only the zip format (torch.save's default) has it
        with warnings.catch_warnings():  # "Detected pickle protocol 4": refused below if unsafe
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True,
                                mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        raise ConfigError(
            f"pretrained weights {path} hold pickled objects that are not tensors, which are "
            "never loaded (they could run code); save the state dict with safetensors"
        ) from None
    except SafetensorError as error:  # the format's own words: a header that does not parse
        reason = first_line(error)
        raise ConfigError(
            f"pretrained weights {path} cannot be read ({reason[:200]}); write them again with "
            "safetensors.torch.save_file or torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:  # may quote the bytes read
        raise ConfigError(
            f"pretrained weights {path} cannot be read ({type(error).__name__}); write them "
            "again with safetensors.torch.save_file or torch.save(model.state_dict())"
        ) from None
    if not _is_state_dict(_state_dict_of(loaded)):
        raise ConfigError(
            f"pretrained weights {path} hold a {type(loaded).__name__}, not a state dict (a "
            "mapping of parameter names to tensors); save model.state_dict() instead"
        )


def _state_dict_of(checkpoint: Any) -> Any:
    """What timm's `load_state_dict` takes from a checkpoint: its EMA, `state_dict` or `model`
    entry, or the checkpoint itself."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if checkpoint.get(key) is not None:
                return checkpoint[key]
    return checkpoint


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def create_backbone(config: TrialConfig, num_classes: int) -> torch.nn.Module:
    """timm model with a fresh `num_classes` head; weights from the hub, a local file, or none."""
    check_backbone(config.backbone)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": config.drop_rate}
    if isinstance(config.pretrained, str):
        weights = check_weights_file(config.pretrained)
        # timm loads .safetensors directly and .pth with torch.load(weights_only=True),
        # and drops a classifier whose class count differs from ours.
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        pretrained = True
    else:
        pretrained = config.pretrained
    # Settings only some architectures take: a ViT resamples its position embedding to img_size
    # and has stochastic depth; a ResNet needs neither. Dropped (with a warning) where refused,
    # so one search space can span both families.
    wanted: dict[str, Any] = {"img_size": config.img_size, "drop_path_rate": config.drop_path_rate}
    optional = {k: v for k, v in wanted.items() if v}
    while True:
        try:
            return timm.create_model(config.backbone, pretrained=pretrained, **kwargs, **optional)
        except TypeError as error:
            refused = next((k for k in optional if f"'{k}'" in str(error)), None)
            if refused is None:
                raise
            if refused != "img_size":
                warnings.warn(f"{config.backbone} has no {refused}; ignoring it", stacklevel=2)
            optional.pop(refused)
        except RuntimeError as error:  # torch's load_state_dict: a heading, a line a problem
            lines = str(error).strip().splitlines()
            if not isinstance(config.pretrained, str) or "loading state_dict" not in str(error):
                raise
            first = " ".join(lines[1].split()).rstrip(".")[:300] if len(lines) > 1 else "torch refused them"
            raise ConfigError(
                f"pretrained weights {config.pretrained} do not fit {config.backbone} ({first}); "
                f"give weights saved from {config.backbone}"
            ) from None


def preprocessing(model: torch.nn.Module, img_size: int | None) -> Preprocessing:
    cfg = timm.data.resolve_data_config({}, model=model)
    size = img_size or int(cfg["input_size"][-1])
    return Preprocessing(
        img_size=size,
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
    )


def backbone_stages(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names of each backbone stage in forward order; the classifier is excluded."""
    matcher = model.group_matcher(coarse=True)  # type: ignore[operator]
    groups = group_parameters(model, matcher)
    head = _classifier_names(model)
    stages = []
    for _, names in sorted(groups.items()):
        body = [n for n in names if not any(n.startswith(h + ".") for h in head)]
        if body:
            stages.append(body)
    return stages


def freeze_stages(model: torch.nn.Module, depth: int | str) -> int:
    """Freeze the first `depth` stages ('all' = linear probe); returns how many were frozen.

    timm's `freeze` turns the stages' BatchNorm layers into FrozenBatchNorm2d, so frozen stages
    keep their running statistics whatever mode the model is in. Parameters that hang directly off
    a stage rather than off a module (a ViT's cls_token, pos_embed) are frozen by flag.
    """
    stages = backbone_stages(model)
    count = len(stages) if depth == "all" else int(depth)
    if count > len(stages):
        raise ConfigError(
            f"freeze_stages={depth} but {type(model).__name__} has {len(stages)} stages; "
            f"use 0..{len(stages)} or 'all'"
        )
    frozen = {name for stage in stages[:count] for name in stage}
    modules = sorted({name.rpartition(".")[0] for name in frozen if "." in name})
    if modules:
        freeze(model, modules)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return count


def _classifier_names(model: torch.nn.Module) -> list[str]:
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
    names = cfg.get("classifier", "head")
    return [names] if isinstance(names, str) else list(names)
