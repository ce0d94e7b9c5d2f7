"""Checkpoints: a directory of safetensors and JSON, never a pickle.

A trial's own checkpoints (what the engine writes each epoch, `automl-checkpoint/1`):

    model.safetensors      the model's weights
    config.json            trial config, timm name, class names, preprocessing
    metrics.json           the epoch's metrics and the per-epoch history
    optimizer.safetensors  optimizer tensors (resume only)
    trainer.json           epoch, objective history, early-stopping state, optimizer scalars

What `automl pull` writes is a timm / Hugging Face Hub model folder instead (`workers/model/hub.py`,
`automl-checkpoint/2`: timm's config.json and weights, our metadata in automl.json). Readers
take either (`read_info`).

A checkpoint is written to a sibling temp directory and renamed into place, so a reader (Ray Tune
persisting it, a user pulling it, a crash mid-write) never sees half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from workers.errors import UserError

FORMAT = "automl-checkpoint/1"


class CheckpointError(UserError):
    """A folder that is not a checkpoint, or a damaged one; the message says what to pass."""


@dataclass
class TrainerState:
    """What, beside weights and optimizer tensors, a resumed trial needs to continue its curve."""

    epoch: int = 0
    objective_history: list[float] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def write_checkpoint(
    target: Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    metrics: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    state: TrainerState | None = None,
) -> Path:
    """Write atomically to `target` (replacing it); returns `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_model(model, str(staging / "model.safetensors"))
        _dump(staging / "config.json", {"format": FORMAT, **config})
        _dump(staging / "metrics.json", metrics)
        if optimizer is not None and state is not None:
            tensors, scalars = _split_optimizer_state(optimizer.state_dict())
            save_file(tensors, str(staging / "optimizer.safetensors"))
            _dump(staging / "trainer.json", {**state.__dict__, "optimizer": scalars})
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


HUB_FORMAT = "automl-checkpoint/2"
HUB_META = "automl.json"  # our metadata beside timm's files: trial config, metrics, costs, job


def read_info(checkpoint: Path) -> dict[str, Any]:
    """What a reader needs of either layout: `trial` (config), `classes`, `preprocessing`,
    `frozen_stages` (of the saved weights' modules), `metrics`, and in a published model
    folder the `temperature` its job's evaluation fitted (None: not calibrated)."""
    meta = checkpoint / HUB_META
    if not meta.is_file():
        return {**read_config(checkpoint), "metrics": read_metrics(checkpoint)}
    try:
        info: dict[str, Any] = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta} is damaged ({error}); pull the checkpoint again") from None
    if info.get("format") != HUB_FORMAT:
        raise CheckpointError(f"{meta}: not an automl model folder (format {info.get('format')!r})")
    # a Hub folder's weights are timm's own modules: no stage is frozen in them
    return {"trial": info["trial_config"], "classes": info["classes"],
            "preprocessing": info["preprocessing"], "frozen_stages": 0,
            "metrics": info.get("metrics", {}), "temperature": info.get("temperature")}


def read_config(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} is not a checkpoint directory (no config.json); "
            "pass the directory written by `automl pull` or `automl train-one --out`"
        )
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is damaged ({error}); pull the checkpoint again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(
            f"{path}: not an automl checkpoint (format {found!r}, expected {FORMAT!r}); pass "
            "the directory written by `automl pull` or `automl train-one --out`"
        )
    return config


def read_metrics(checkpoint: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads((checkpoint / "metrics.json").read_text())
    return metrics


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    try:
        load_model(model, str(weights), device="cpu")
    except SafetensorError as error:
        raise CheckpointError(f"{weights} is damaged ({error}); pull the checkpoint again") from None


def load_trainer_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> TrainerState:
    """Restore the optimizer in place and return the loop state saved beside it."""
    saved = json.loads((checkpoint / "trainer.json").read_text())
    scalars = saved.pop("optimizer")
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer_state(tensors, scalars))
    return TrainerState(**saved)


def _split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state_dict["param_groups"], "state": {}}
    for param_id, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(param_id), {})[name] = value
    return tensors, scalars


def _join_optimizer_state(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {
        int(pid): dict(entries) for pid, entries in scalars["state"].items()
    }
    for key, value in tensors.items():
        param_id, _, name = key.partition(".")
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": scalars["param_groups"]}


def _dump(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
