"""The pulled model folder is timm's own layout: timm loads it, and predicts what automl does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from workers.config import TrialConfig
from workers.data.sources import load_index
from workers.model.checkpoint import HUB_FORMAT, CheckpointError
from workers.model.hub import write_hub_folder
from workers.predict import load_checkpoint, predict_images
from workers.train.loop import train

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3, "epochs": 1,
        "freeze_stages": 2}


def test_timm_loads_the_folder_and_predicts_the_labels_automl_predicts(tmp_path: Path) -> None:
    config = TrialConfig.from_dict(TINY)
    trial_checkpoint = train(config, tmp_path / "trial").best_checkpoint
    assert trial_checkpoint is not None
    folder = write_hub_folder(trial_checkpoint, tmp_path / "model", {"job": "digits-1"})
    saved = json.loads((folder / "config.json").read_text())
    assert saved["architecture"] == "test_resnet" and saved["num_classes"] == 10
    assert saved["label_names"] == [str(d) for d in range(10)]  # where save_for_hf puts them
    assert saved["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert json.loads((folder / "automl.json").read_text())["format"] == HUB_FORMAT

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    images = list(load_index(config.data).paths[:20])
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images]))
    names = model.pretrained_cfg["label_names"]  # timm's loader moves them here
    assert names == [str(d) for d in range(10)]
    by_timm = [names[i] for i in logits.argmax(dim=1).tolist()]
    cpu = torch.device("cpu")
    assert [p.label for p in predict_images(load_checkpoint(folder, cpu), images)] == by_timm
    # a trial's own checkpoint (the layout pulled before, automl-checkpoint/1) still reads
    assert [p.label for p in predict_images(load_checkpoint(trial_checkpoint, cpu), images)] == by_timm


def test_a_folder_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "automl.json").write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(CheckpointError, match="not an automl model folder"):
        load_checkpoint(tmp_path, torch.device("cpu"))
