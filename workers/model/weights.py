"""Pretrained weights: a local file checked before any trial loads it, and whether timm could
fetch a backbone's weights from the Hugging Face Hub."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import timm
import torch

from workers.config import ConfigError
from workers.errors import first_line


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
