"""Distillation's parts: the teacher sees the student's batch as it was trained to see images, and
the loss mixes the task loss with the teacher's softened outputs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from timm.data import Mixup

from workers.config import ConfigError, TrialConfig
from workers.data.sources import load_index
from workers.errors import UserError
from workers.model.preprocessing import Preprocessing
from workers.predict import LoadedModel, load_checkpoint
from workers.train.augment import normalize
from workers.train.distill import DistillationLoss, Teacher, mix_with_teacher
from workers.train.loop import train

STUDENT = Preprocessing(img_size=32, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
TEACHER = Preprocessing(img_size=32, crop_pct=1.0, interpolation="bilinear",
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def teacher(prep: Preprocessing) -> Teacher:
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    loaded = LoadedModel(model, TrialConfig(), [str(d) for d in range(10)], prep,
                         torch.device("cpu"))
    return Teacher(loaded, STUDENT, torch.device("cpu"))


def test_the_teacher_sees_a_student_batch_as_its_own_preprocessing_would_show_it() -> None:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    taught = teacher(TEACHER)
    with torch.inference_mode():
        own = taught.model(normalize(images, TEACHER.mean, TEACHER.std))
    got = taught(normalize(images, STUDENT.mean, STUDENT.std))
    torch.testing.assert_close(got, own, atol=1e-4, rtol=1e-4)
    assert taught.forwards == 1 and not got.requires_grad


def test_a_teacher_trained_at_another_size_gets_the_batch_resized() -> None:
    taught = teacher(Preprocessing(48, 1.0, "bilinear", TEACHER.mean, TEACHER.std))
    assert taught(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_loss_is_the_task_loss_at_alpha_zero_and_the_soft_term_alone_at_one() -> None:
    torch.manual_seed(0)
    logits, teacher_logits = torch.randn(8, 10), torch.randn(8, 10)
    targets = torch.randint(0, 10, (8,))
    task = torch.nn.CrossEntropyLoss()
    assert DistillationLoss(task, 4.0, 0.0)(logits, targets, teacher_logits) == task(logits, targets)
    soft = DistillationLoss(task, 4.0, 1.0)
    assert soft(logits, targets, logits) < 1e-6  # a student that matches its teacher
    assert soft(logits, targets, teacher_logits) > 0.01
    half = DistillationLoss(task, 4.0, 0.5)(logits, targets, teacher_logits)
    expected = 0.5 * task(logits, targets) + 0.5 * soft(logits, targets, teacher_logits)
    torch.testing.assert_close(half, expected)


def counted_teacher(tiny: dict[str, Any], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[int]]:
    """A teacher trained on `tiny`, and the batch size of each teacher pass from now on."""
    teacher_dir = train(TrialConfig.from_dict(tiny), tmp_path / "teacher").best_checkpoint
    assert teacher_dir is not None
    passes: list[int] = []
    real = Teacher.__call__

    def counted(self: Teacher, images: torch.Tensor) -> torch.Tensor:
        passes.append(len(images))
        return real(self, images)

    monkeypatch.setattr(Teacher, "__call__", counted)
    return teacher_dir, passes


def test_a_student_trains_against_its_teacher_with_one_teacher_pass_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = {"backbone": "test_resnet", "img_size": 32, "batch_size": 64, "lr": 3e-3, "epochs": 1}
    teacher_dir, passes = counted_teacher(tiny, tmp_path, monkeypatch)
    student = TrialConfig.from_dict({**tiny, "img_size": 24, "epochs": 2,
                                     "teacher": str(teacher_dir), "distill_alpha": 0.7})
    summary = train(student, tmp_path / "student")
    index = load_index(student.data)
    batches = len(index.split_indices["train"]) // 64  # drop_last
    assert passes == [64] * (2 * batches)  # the teacher costs one pass per student batch
    assert summary.history[-1]["teacher_forwards"] == 2 * batches
    assert summary.epochs_run == 2 and 0 <= summary.best_metrics["val_accuracy"] <= 1
    assert summary.best_checkpoint is not None  # a plain checkpoint: predicts without the teacher
    assert load_checkpoint(summary.best_checkpoint, torch.device("cpu")).preprocessing.img_size == 24


def test_cached_targets_cost_one_teacher_pass_per_training_batch_per_run_of_a_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = {"backbone": "test_resnet", "img_size": 16, "batch_size": 64, "lr": 3e-3, "epochs": 1}
    teacher_dir, passes = counted_teacher(tiny, tmp_path, monkeypatch)
    # mixup on: the cached teacher outputs are mixed as the labels are
    student = TrialConfig.from_dict({**tiny, "epochs": 2, "teacher": str(teacher_dir),
                                     "distill_targets": "cached", "mixup_alpha": 0.2})
    images = len(load_index(student.data).split_indices["train"])
    once = math.ceil(images / 64)
    summary = train(student, tmp_path / "student", callback=lambda epoch: epoch.epoch == 1)
    assert summary.epochs_run == 1 and len(passes) == once and sum(passes) == images
    assert summary.history[-1]["teacher_forwards"] == once
    # a restart from the checkpoint computes them again, then nothing more for the epoch
    resumed = train(student, tmp_path / "student", resume=tmp_path / "student" / "latest")
    assert resumed.epochs_run == 2 and len(passes) == 2 * once
    assert resumed.history[-1]["teacher_forwards"] == once  # this run's own passes
    assert 0 <= resumed.best_metrics["val_accuracy"] <= 1


def test_cached_teacher_outputs_are_mixed_with_the_labels_lambda_and_partner() -> None:
    mixer = Mixup(mixup_alpha=0.4, label_smoothing=0.0, num_classes=10)
    torch.manual_seed(0)
    images, teacher_logits = torch.rand(8, 3, 8, 8), torch.randn(8, 10) * 3
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    np.random.seed(0)
    plain_images, plain_targets = mixer(images.clone(), targets)
    np.random.seed(0)
    mixed_images, soft, taught = mix_with_teacher(mixer, images.clone(), targets, teacher_logits,
                                                  4.0)
    torch.testing.assert_close(mixed_images, plain_images)  # the very draws of the mixer
    torch.testing.assert_close(soft, plain_targets)
    lam = float(soft[0, 0])
    assert 0 < lam < 1
    p = (teacher_logits / 4.0).softmax(1)
    torch.testing.assert_close((taught / 4.0).softmax(1), lam * p + (1 - lam) * p.flip(0))


def test_a_distill_setting_out_of_range_or_a_missing_teacher_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("distill_alpha=1.5 must be in [0, 1]")):
        TrialConfig.from_dict({"distill_alpha": 1.5})
    with pytest.raises(ConfigError, match=re.escape(
            "distill_targets='soft' is not one of consistent, cached")):
        TrialConfig.from_dict({"distill_targets": "soft"})
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        train(TrialConfig.from_dict({"backbone": "test_resnet", "img_size": 32, "epochs": 1,
                                     "teacher": str(tmp_path / "nowhere")}), tmp_path / "s")
