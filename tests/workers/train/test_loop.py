"""The trial engine learns, freezes, checkpoints and resumes as a user would expect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support import trial_folders
from workers.config import TrialConfig
from workers.data.sources import load_index
from workers.model.backbone import backbone_stages, create_backbone
from workers.predict import evaluate_checkpoint, load_checkpoint, predict_images
from workers.train.device import Acceleration
from workers.train.loop import EpochResult, train

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3}


def test_tiny_model_learns_digits(tmp_path: Path) -> None:
    # digits are not mirror-symmetric, so this test trains without flips
    config = TrialConfig.from_dict({**TINY, "epochs": 4, "augment": "none"})
    seen: list[EpochResult] = []
    summary = train(config, tmp_path, callback=seen.append)
    assert [r.epoch for r in seen] == [1, 2, 3, 4]
    assert summary.best_value >= 0.90
    assert seen[-1].metrics["val_accuracy"] > seen[0].metrics["val_accuracy"]
    for key in ("val_loss", "val_precision", "val_recall", "val_f1", "val_auroc"):
        assert 0.0 <= seen[-1].metrics[key] < 10.0
    matrix = seen[-1].metrics["val_confusion_matrix"]
    val_images = len(load_index(config.data).split_indices["val"])
    assert len(matrix) == 10 and sum(map(sum, matrix)) == val_images
    assert "val_confusion_matrix" not in seen[-1].report


def test_callback_can_stop_a_trial(tmp_path: Path) -> None:
    config = TrialConfig.from_dict({**TINY, "epochs": 5})
    summary = train(config, tmp_path, callback=lambda result: result.epoch == 2)
    assert summary.epochs_run == 2 and summary.stopped_by == "callback"


def test_a_ray_tune_trial_writes_no_best_copy_and_leaves_no_working_folder(
    local_ray: None, tmp_path: Path
) -> None:
    """Ray Tune keeps the best of the checkpoints a trial reports, so the engine's own `best/`
    copy would be one more model per trial that nothing reads; the working folder is scratch.
    The real adapter, as Ray Tune runs it on local Ray."""
    from ray import tune

    from workers.tune_adapter import run_tune_trial

    before = trial_folders()
    grid = tune.Tuner(
        tune.with_resources(run_tune_trial, {"cpu": 1}),
        param_space={**TINY, "epochs": 2},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="one", verbose=0),
    ).fit()
    result = grid[0]
    assert result.error is None, result.error
    assert result.metrics is not None and result.metrics["training_iteration"] == 2
    persisted = {p.name for p in Path(result.checkpoint.path).iterdir()}
    assert {"model.safetensors", "config.json", "metrics.json"} <= persisted
    assert not list(tmp_path.rglob("best")), "a best/ copy was reported"
    pid = result.metrics["pid"]  # the trial's worker: other jobs' trials may share TMPDIR
    assert {f for f in trial_folders() - before if f.name.startswith(f"automl-trial-{pid}-")} \
        == set()


def test_the_engine_keeps_no_best_copy_when_told(tmp_path: Path) -> None:
    """What the adapter asks of the loop under Ray Tune: no `best/` folder beside `latest/`."""
    summary = train(TrialConfig.from_dict({**TINY, "epochs": 2}), tmp_path, keep_best=False)
    assert summary.best_checkpoint is None
    assert {p.name for p in tmp_path.iterdir()} == {"latest"}


def test_early_stopping_on_patience(tmp_path: Path) -> None:
    config = TrialConfig.from_dict(
        {**TINY, "epochs": 8, "lr": 1e-9, "patience": 1, "schedule": "constant"}
    )
    summary = train(config, tmp_path)
    assert summary.stopped_by == "early_stopping"
    assert summary.epochs_run < 8


@pytest.mark.parametrize("depth", [2, "all"])
def test_frozen_stages_stay_bit_identical(tmp_path: Path, depth: int | str) -> None:
    config = TrialConfig.from_dict({**TINY, "epochs": 1, "freeze_stages": depth, "lr": 1e-2})
    torch.manual_seed(config.seed)
    initial = create_backbone(config, num_classes=10).state_dict()
    fresh = create_backbone(config, num_classes=10)
    stages = backbone_stages(fresh)
    head = [n for n, _ in fresh.named_parameters() if all(n not in st for st in stages)]
    summary = train(config, tmp_path)
    trained = load_checkpoint(summary.best_checkpoint, torch.device("cpu")).model.state_dict()
    count = len(stages) if depth == "all" else depth
    frozen = [name for stage in stages[:count] for name in stage]
    moving = [name for stage in stages[count:] for name in stage]
    assert frozen
    for name in frozen:
        assert torch.equal(initial[name], trained[name]), name
    # running statistics of frozen BatchNorm layers do not move either
    frozen_modules = {name.rpartition(".")[0] for name in frozen}
    for name, value in initial.items():
        if (
            name.endswith(("running_mean", "running_var"))
            and name.rpartition(".")[0] in frozen_modules
        ):
            assert torch.equal(value, trained[name]), name
    assert any(not torch.equal(initial[n], trained[n]) for n in moving + head)


def test_checkpoint_round_trip_predicts_identically(tmp_path: Path) -> None:
    config = TrialConfig.from_dict({**TINY, "epochs": 1})
    summary = train(config, tmp_path)
    assert summary.best_checkpoint is not None
    files = {p.name for p in summary.best_checkpoint.iterdir()}
    assert files == {"model.safetensors", "config.json", "metrics.json"}
    loaded = load_checkpoint(summary.best_checkpoint, torch.device("cpu"))
    assert loaded.classes == [str(d) for d in range(10)]
    again = load_checkpoint(summary.best_checkpoint, torch.device("cpu"))
    paths = list(load_index(config.data).paths[:16])
    first = predict_images(loaded, paths)
    second = predict_images(again, paths)
    assert [p.probabilities for p in first] == [p.probabilities for p in second]
    # the loaded model scores the val split exactly as training measured it
    val = evaluate_checkpoint(loaded, "val")
    assert val["val_accuracy"] == pytest.approx(summary.best_metrics["val_accuracy"], abs=1e-6)


def test_resume_continues_the_curve(tmp_path: Path) -> None:
    config = TrialConfig.from_dict(
        {**TINY, "epochs": 4, "schedule": "cosine", "warmup_epochs": 1, "mixup_alpha": 0.2}
    )
    straight = train(config, tmp_path / "straight")
    interrupted = train(config, tmp_path / "cut", callback=lambda r: r.epoch == 2)
    assert interrupted.epochs_run == 2
    resumed = train(config, tmp_path / "resumed", resume=tmp_path / "cut" / "latest")
    assert resumed.epochs_run == 4
    assert len(resumed.history) == 4
    for ours, theirs in zip(resumed.history, straight.history, strict=True):
        assert ours["lr"] == pytest.approx(theirs["lr"])
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        assert ours["val_accuracy"] == pytest.approx(theirs["val_accuracy"], abs=1e-6)


def test_the_gpu_settings_learn_and_checkpoint_on_cpu(tmp_path: Path) -> None:
    """CI has no GPU: run the GPU code path (bf16 autocast, channels-last, loader workers,
    mixup's soft targets) on the CPU, so a break in it shows up before a user's cluster does."""
    gpu_like = Acceleration(autocast=True, channels_last=True, loader_workers=2)
    config = TrialConfig.from_dict(
        {**TINY, "epochs": 3, "augment": "none", "mixup_alpha": 0.2, "label_smoothing": 0.1}
    )
    summary = train(config, tmp_path, acceleration=gpu_like)
    assert summary.best_value >= 0.5  # ten classes: chance is 0.1
    assert summary.best_checkpoint is not None
    loaded = load_checkpoint(summary.best_checkpoint, torch.device("cpu"))
    val = evaluate_checkpoint(loaded, "val")  # float32 on the CPU, where training scored bf16
    assert val["val_accuracy"] == pytest.approx(summary.best_metrics["val_accuracy"], abs=0.03)
