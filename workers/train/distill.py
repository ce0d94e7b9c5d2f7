"""Knowledge distillation: a student trained to match a frozen teacher's outputs.

The teacher sees the very batch the student sees, augmentation and mixup included ("consistent
teaching", Beyer et al. 2022): targets computed once per image from un-augmented crops disagree
with what the student is shown, and that gap is what long distillation schedules cannot close.
The price is one teacher forward pass per student batch, under `inference_mode` (no activations
kept); `Teacher.forwards` counts them so the cost stated in the README is the one tested.

The student's batch is normalized for the student; the teacher may have been trained at another
size or normalization, so the batch is taken back to [0, 1] pixels, resized, and normalized the
teacher's way on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.model.preprocessing import Preprocessing
from workers.predict import LoadedModel


class Teacher:
    """A loaded checkpoint, frozen, answering logits for student-normalized batches."""

    def __init__(self, loaded: LoadedModel, student: Preprocessing, device: torch.device) -> None:
        self.model = loaded.model.to(device).eval().requires_grad_(False)
        self.classes = loaded.classes
        self.size = loaded.preprocessing.img_size
        self._scale, self._shift = _renormalization(student, loaded.preprocessing, device)
        self.forwards = 0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        images = images.float() * self._scale + self._shift
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                   antialias=True, align_corners=False)
        return self.model(images).float()


def _renormalization(
    student: Preprocessing, teacher: Preprocessing, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x_teacher = x_student * scale + shift, per channel."""
    s_mean, s_std, t_mean, t_std = (
        torch.tensor(v, device=device).view(1, 3, 1, 1)
        for v in (student.mean, student.std, teacher.mean, teacher.std)
    )
    return s_std / t_std, (s_mean - t_mean) / t_std


class DistillationLoss(torch.nn.Module):
    """(1 - alpha) x the task loss + alpha x T^2 x KL(teacher_T || student_T).

    T^2 keeps the soft term's gradients on the scale of the hard one as T grows (Hinton et al.
    2015), so alpha means the same at every temperature."""

    def __init__(self, task: torch.nn.Module, temperature: float, alpha: float) -> None:
        super().__init__()
        self.task, self.temperature, self.alpha = task, temperature, alpha

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits.float() / t, dim=1),
                        F.log_softmax(teacher_logits.float() / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
        if self.alpha >= 1:
            return soft
        return (1 - self.alpha) * self.task(logits, targets) + self.alpha * soft
