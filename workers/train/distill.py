"""Knowledge distillation: a student trained to match a frozen teacher's outputs.

Two ways for the teacher's signal to reach the student (`distill_targets`):

- "consistent" (the default): the teacher sees the very batch the student sees, augmentation and
  mixup included (Beyer et al. 2022): targets computed once per image from un-augmented crops
  disagree with what the student is shown. The price is one teacher forward pass per student
  batch, under `inference_mode` (no activations kept).
- "cached": the teacher runs once over the training images as evaluation shows them (the center
  crop, no augmentation) before the first epoch, and each student batch looks its images' logits
  up (float16, on the CPU): ceil(train images / batch size) teacher passes per trial, whatever the
  epochs. A trial resumed from a checkpoint computes them again (they are not checkpointed). With
  mixup/cutmix the cached teacher probabilities are mixed with the labels' lambda and pairing.

`Teacher.forwards` counts the passes in both modes (and `Teacher.seconds` their wall time), so the
cost stated in the README is the one tested.

The student's batch is normalized for the student; the teacher may have been trained at another
size or normalization, so the batch is taken back to [0, 1] pixels, resized, and normalized the
teacher's way on the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target

from workers.data.loaders import CachedImages, CachedSquares
from workers.model.preprocessing import Preprocessing
from workers.predict import LoadedModel

# timm's private names this module calls (timm pinned in requirements.lock), checked by
# tests/search/test_optuna_private_names.py: the draw Mixup.__call__ makes, without its labels
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {"timm.data.mixup.Mixup._mix_batch": ("self", "x")}


class Teacher:
    """A loaded checkpoint, frozen, answering logits for student-normalized batches."""

    def __init__(self, loaded: LoadedModel, student: Preprocessing, device: torch.device) -> None:
        self.model = loaded.model.to(device).eval().requires_grad_(False)
        self.classes = loaded.classes
        self.size = loaded.preprocessing.img_size
        self._scale, self._shift = _renormalization(student, loaded.preprocessing, device)
        self.forwards = 0  # forward passes, one per batch it was given
        self.seconds = 0.0  # their wall time (on CUDA, without a synchronize: launch time)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        self.forwards += 1
        images = images.float() * self._scale + self._shift
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                   antialias=True, align_corners=False)
        logits = self.model(images).float()
        self.seconds += time.perf_counter() - started
        return logits


class CachedLogits:
    """The teacher's logits for each training image, by its position in the train split: one
    pass over `batches` (normalized eval crops, in split order), kept as float16 on the CPU."""

    def __init__(self, teacher: Teacher, batches: Iterable[torch.Tensor], count: int,
                 classes: int) -> None:
        self.logits = torch.empty(count, classes, dtype=torch.float16)
        filled = 0
        for images in batches:
            self.logits[filled:filled + len(images)] = teacher(images).to("cpu", torch.float16)
            filled += len(images)
        if filled != count:
            raise RuntimeError(f"the teacher saw {filled} training images, expected {count}")

    def __call__(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.logits[positions.cpu()].to(device).float()


def cached_passes(images: int, batch_size: int) -> int:
    """Teacher forward passes a cached-targets trial costs: one per batch of its training images."""
    return math.ceil(images / batch_size)


class IndexedImages(CachedImages):
    """`CachedImages` whose targets are (label, position in the split) pairs, so a batch can look
    its cached teacher logits up; the loader's shuffle is untouched."""

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        image, label = super().__getitem__(item)
        return image, torch.tensor([label, item])


class IndexedSquares(CachedSquares):
    """`CachedSquares` with (label, position) targets, as `IndexedImages`."""

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = super().__getitems__(items)
        return images, torch.stack([labels, torch.as_tensor(items, dtype=torch.int64)], dim=1)


def mix_with_teacher(
    mixer: Mixup, images: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup/CutMix as `mixer(images, targets)` does it (the same draws), plus the teacher's
    cached outputs mixed alike: lam x p_T(image) + (1 - lam) x p_T(its partner), the partner being
    the flipped batch as for the labels. Returned as logits whose softmax at `temperature` is that
    mixture, so `DistillationLoss` takes them unchanged."""
    if mixer.mode != "batch":
        raise ValueError(f"cached teacher targets mix whole batches; mixup mode {mixer.mode!r}")
    lam = float(mixer._mix_batch(images))  # in place, as Mixup.__call__ does
    soft_targets = mixup_target(targets, mixer.num_classes, lam, mixer.label_smoothing)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    if lam < 1.0:
        log_p = torch.logaddexp(log_p + math.log(max(lam, 1e-12)),
                                log_p.flip(0) + math.log(max(1.0 - lam, 1e-12)))
    return images, soft_targets, log_p * temperature


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
