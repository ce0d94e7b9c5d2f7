"""A trial's checkpoint as a timm / Hugging Face Hub model folder: what `automl pull` writes.

Exactly what timm's own `save_for_hf` writes (its `config.json` with `architecture`,
`num_classes`, `num_features`, `label_names` and `pretrained_cfg` with the input size, mean,
std, crop_pct and interpolation the model was evaluated with; `model.safetensors`), so
`timm.create_model("local-dir:DIR", pretrained=True)` loads it and `push_to_hf_hub`'s readers
read it, plus our own metadata in `automl.json` (the trial configuration, its metrics and
costs, the job). The control plane adds the model card (`README.md`).

The weights are those of a freshly built timm model: a trial's frozen stages hold their
BatchNorm layers as FrozenBatchNorm2d (no `num_batches_tracked`), which timm's strict loader
would refuse; in inference the two compute the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file

from workers.config import TrialConfig
from workers.model import checkpoint as ckpt
from workers.model.backbone import create_backbone


def write_hub_folder(checkpoint: Path, out: Path, extra: dict[str, Any] | None = None) -> Path:
    """`out` as a timm model folder from a trial's checkpoint; `extra` goes into automl.json."""
    saved = ckpt.read_config(checkpoint)
    classes = list(saved["classes"])
    config = TrialConfig.from_dict(saved["trial"]).replace(pretrained=False)
    model = create_backbone(config, len(classes)).eval()
    missing, unexpected = model.load_state_dict(load_file(str(checkpoint / "model.safetensors")),
                                                strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        raise ckpt.CheckpointError(f"{checkpoint}: its weights do not fit {config.backbone} "
                                   f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    prep = saved["preprocessing"]
    side = int(prep["img_size"])
    out.mkdir(parents=True, exist_ok=True)
    timm.models.save_for_hf(
        model, str(out), model_config={"label_names": classes}, safe_serialization=True,
        data_config={"input_size": (3, side, side), "crop_pct": prep["crop_pct"],
                     "interpolation": prep["interpolation"], "mean": tuple(prep["mean"]),
                     "std": tuple(prep["std"])},
    )
    meta = {"format": ckpt.HUB_FORMAT, "trial_config": saved["trial"], "classes": classes,
            "preprocessing": prep, "trained_frozen_stages": saved["frozen_stages"],
            "metrics": ckpt.read_metrics(checkpoint), **(extra or {})}
    (out / ckpt.HUB_META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return out
