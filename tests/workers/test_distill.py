"""Distillation's parts: the teacher sees the student's batch as it was trained to see images, and
the loss mixes the task loss with the teacher's softened outputs."""

from __future__ import annotations

import timm
import torch

from workers.augment import normalize
from workers.config import TrialConfig
from workers.distill import DistillationLoss, Teacher
from workers.model import Preprocessing
from workers.predict import LoadedModel

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
