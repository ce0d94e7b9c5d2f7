"""One fine-tuning trial: train epoch by epoch, evaluate, checkpoint, hand the epoch to a callback.

The callback is the only coupling to the outside: Ray Tune's adapter reports through it, the CLI
prints through it, and either can return True to stop the trial (a pruner's verdict). Nothing here
imports Ray, Optuna or a database, so the same loop runs, and is benchmarked, on a bare GPU box.

Run in each process of an initialized `torch.distributed` group, the same loop is one
data-parallel trial (`workers.train.distributed`): the model DDP-wrapped, each rank training on
its share of every global batch and validating on its shard (the metrics summed over all ranks),
rank 0 alone writing checkpoints, every rank calling the callback with the same metrics.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from workers.config import ConfigError, TrialConfig
from workers.data.index import DatasetIndex
from workers.data.loaders import CachedImages, CachedSquares, whole_batch
from workers.data.sources import load_index
from workers.model import checkpoint as ckpt
from workers.model.backbone import create_backbone, freeze_stages
from workers.model.preprocessing import preprocessing
from workers.predict import load_checkpoint
from workers.train.augment import batch_mixer, eval_transform, train_transform
from workers.train.device import Acceleration, pick_device
from workers.train.device_augment import DEVICE_POLICIES, DeviceAugment
from workers.train.distill import (
    CachedLogits,
    DistillationLoss,
    IndexedImages,
    IndexedSquares,
    Teacher,
    mix_with_teacher,
)
from workers.train.distributed import (
    Group,
    RankBatches,
    all_sum,
    any_rank,
    check_batch,
    loss_weight,
    shard,
)
from workers.train.evaluation import device_batches, evaluate_model
from workers.train.optimizer import create_optimizer
from workers.train.prepared import PreparedData, prepare_data
from workers.train.schedules import EpochSchedule

PER_EPOCH_ONLY = ("val_confusion_matrix",)  # kept in metrics.json, left out of reports


@dataclass(frozen=True)
class EpochResult:
    """What the callback sees after each epoch."""

    epoch: int  # 1-based
    metrics: dict[str, Any]
    checkpoint: Path | None  # full state after this epoch; None on a group's ranks but 0
    is_best: bool

    @property
    def report(self) -> dict[str, Any]:
        """Scalar metrics only: what goes to Ray Tune and Optuna."""
        return {k: v for k, v in self.metrics.items() if k not in PER_EPOCH_ONLY}


@dataclass
class TrialSummary:
    config: TrialConfig
    epochs_run: int
    best_epoch: int
    best_value: float
    best_metrics: dict[str, Any]
    best_checkpoint: Path | None  # None when a resumed run never beat its pre-resume best
    stopped_by: str  # "budget", "early_stopping" or "callback"
    history: list[dict[str, Any]] = field(default_factory=list)


Callback = Callable[[EpochResult], bool | None]
StepHook = Callable[[int, int], None]  # (batch index, batches per epoch)


def train(
    config: TrialConfig,
    workdir: Path,
    *,
    callback: Callback | None = None,
    resume: Path | None = None,
    data: PreparedData | None = None,
    index: DatasetIndex | None = None,
    device: torch.device | None = None,
    on_step: StepHook | None = None,
    acceleration: Acceleration | None = None,
    keep_best: bool = True,
    notes: dict[str, Any] | None = None,
) -> TrialSummary:
    """Run (or resume) one trial; `workdir/latest` holds its checkpoint after each epoch, and
    `workdir/best` its best epoch's model (unless `keep_best` is off: under Ray Tune, which keeps
    the best of the checkpoints it was handed, nothing reads it). `notes` go into every
    checkpoint's metrics.json beside the epoch's metrics (a configuration's costs). `index` is
    the dataset's index when the caller has it (a job's driver indexes once for all trials)."""
    device = device or pick_device()
    acceleration = acceleration or Acceleration.for_device(device, config)
    group = Group.current()
    _seed_everything(config.seed)
    if data is not None:
        index = data.index
    elif index is None:
        index = load_index(config.data)
    model = create_backbone(config, len(index.classes))
    data = data or prepare_data(config, preprocessing(config.backbone, config.img_size), index)
    frozen = freeze_stages(model, config.freeze_stages)
    model.to(device)
    if acceleration.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(config, model)
    schedule = EpochSchedule(config, optimizer)
    state = ckpt.TrainerState()
    if resume is not None:
        ckpt.load_weights(model, resume)
        state = ckpt.load_trainer_state(resume, optimizer)
        schedule.fast_forward(state.objective_history)
    teacher = _teacher(config, data, device) if config.teacher else None
    run = _Run(config, data, model, optimizer, schedule, device, acceleration, frozen, teacher,
               group)
    run.notes = dict(notes or {})
    summary_stop = "budget"
    while state.epoch < config.epochs:
        epoch = state.epoch + 1
        _seed_everything(config.seed * 100_003 + epoch + 7_919 * group.rank)
        metrics = run.epoch(epoch, on_step)
        value = float(metrics[config.objective])
        improved = state.best_value is None or (
            value > state.best_value if config.maximize else value < state.best_value
        )
        state.epoch = epoch
        state.objective_history.append(value)
        state.history.append({k: v for k, v in metrics.items() if k not in PER_EPOCH_ONLY})
        if improved:
            state.best_value, state.best_epoch, state.bad_epochs = value, epoch, 0
        else:
            state.bad_epochs += 1
        schedule.step(value)
        latest = run.save(workdir / "latest", metrics, state) if group.leader else None
        if improved and keep_best and group.leader:
            ckpt.write_checkpoint(
                workdir / "best", model, run.checkpoint_config(),
                {**_with_history(metrics, state), **run.notes}
            )
        stop = callback is not None and bool(callback(EpochResult(epoch, metrics, latest, improved)))
        if group.world > 1:  # one rank's stop is the group's
            stop = any_rank(stop, device)
        if stop:
            summary_stop = "callback"
            break
        if config.patience is not None and state.bad_epochs >= config.patience:
            summary_stop = "early_stopping"
            break
    best_dir = workdir / "best"
    return TrialSummary(
        config=config,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_value=float(state.best_value if state.best_value is not None else float("nan")),
        best_metrics=state.history[state.best_epoch - 1] if state.best_epoch else {},
        best_checkpoint=best_dir if best_dir.exists() else None,
        stopped_by=summary_stop,
        history=state.history,
    )


class _Run:
    """The per-trial objects the epoch loop needs, built once."""

    def __init__(
        self,
        config: TrialConfig,
        data: PreparedData,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: EpochSchedule,
        device: torch.device,
        acceleration: Acceleration,
        frozen_stages: int,
        teacher: Teacher | None = None,
        group: Group | None = None,
    ) -> None:
        self.config, self.data, self.model, self.teacher = config, data, model, teacher
        self.group = group or Group()
        # what trains: the model itself, or its DDP wrapper in a group (which averages the
        # ranks' gradients); evaluation and checkpoints use the model itself
        self.trained: torch.nn.Module = model
        self.optimizer, self.schedule, self.device = optimizer, schedule, device
        self.acceleration = acceleration
        self.frozen_stages = frozen_stages
        self.notes: dict[str, Any] = {}
        prep = data.preprocessing
        labels, split = data.index.labels, data.index.split_indices
        # `none` is the eval crop, a slice either way: it stays in the loader
        self.device_augment = (
            DeviceAugment(config, prep.img_size)
            if acceleration.augment_on_device and config.augment in DEVICE_POLICIES
            else None
        )
        # cached teacher targets: the batches carry their images' positions to look them up
        cached = teacher is not None and config.distill_targets == "cached"
        self.train_set = (
            (IndexedSquares if cached else CachedSquares)(data.pixels, labels, split["train"])
            if self.device_augment
            else (IndexedImages if cached else CachedImages)(
                data.pixels, labels, split["train"], train_transform(config, prep.img_size)
            )
        )
        val = split["val"]
        if self.group.world > 1:  # each rank its shard; the metrics sum them (Evaluator)
            val = val[shard(len(val), self.group)]
        self.val_set = CachedImages(data.pixels, labels, val, eval_transform(prep.img_size))
        self.cached_logits = self._cache_teacher(teacher) if cached and teacher else None
        self.mixer = batch_mixer(config, data.num_classes)
        if self.mixer is not None and config.batch_size % 2:
            raise ConfigError(
                f"batch_size={config.batch_size} must be even when mixup/cutmix is on"
            )
        if self.group.world > 1:
            problem = check_batch(config.batch_size, self.group.world,
                                  pairs=self.mixer is not None)
            if problem:
                raise ConfigError(problem)
            self.trained = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.criterion: torch.nn.Module = (
            SoftTargetCrossEntropy()
            if self.mixer is not None
            else torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        )
        if teacher is not None:
            self.criterion = DistillationLoss(
                self.criterion, config.distill_temperature, config.distill_alpha)

    def _cache_teacher(self, teacher: Teacher) -> CachedLogits:
        """The teacher's logits for every training image, its eval crop: once per trial (again
        after a restart: they are not checkpointed)."""
        split = self.data.index.split_indices["train"]
        crops = CachedImages(self.data.pixels, self.data.index.labels, split,
                             eval_transform(self.data.preprocessing.img_size))
        batches = device_batches(self.loader(crops, train=False), self.device,
                                 self.data.preprocessing, self.acceleration.channels_last)
        return CachedLogits(teacher, (images for images, _ in batches), len(split),
                            self.data.num_classes)

    def loader(self, dataset: CachedImages, *, train: bool, epoch: int = 0) -> DataLoader[Any]:
        generator = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
        collate = whole_batch if isinstance(dataset, CachedSquares) else None
        if train and self.group.world > 1:  # this rank's share of each global batch
            return DataLoader(
                dataset,
                batch_sampler=RankBatches(len(dataset), self.config.batch_size, self.group,
                                          self.config.seed * 7919 + epoch,
                                          pairs=self.mixer is not None),
                num_workers=self.acceleration.loader_workers,
                pin_memory=self.acceleration.pin_memory,
                collate_fn=collate,
            )
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.config.batch_size,
            num_workers=self.acceleration.loader_workers,
            pin_memory=self.acceleration.pin_memory,
            generator=generator,
            persistent_workers=False,
            collate_fn=collate,
        )

    def batches(
        self, loader: DataLoader[Any], epoch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = None
        if self.device_augment is not None:  # the epoch's own draws, as the loader's shuffle
            rng = np.random.default_rng([self.config.seed, epoch])
            augment = functools.partial(self.device_augment, rng=rng)
        return device_batches(
            loader, self.device, self.data.preprocessing, self.acceleration.channels_last, augment
        )

    def epoch(self, epoch: int, on_step: StepHook | None) -> dict[str, Any]:
        started = time.perf_counter()
        lr = self.schedule.lr
        train_loss, seen = self._train_epoch(epoch, on_step)
        train_seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_images_per_second": seen / max(train_seconds, 1e-9),
        }
        metrics.update(self.evaluate(self.loader(self.val_set, train=False), "val"))
        metrics["epoch_seconds"] = time.perf_counter() - started
        if self.teacher is not None:  # its cost so far in this run of the trial
            metrics["teacher_forwards"] = self.teacher.forwards
            metrics["teacher_seconds"] = self.teacher.seconds
        return metrics

    def _train_epoch(self, epoch: int, on_step: StepHook | None) -> tuple[float, int]:
        self.trained.train()
        loader = self.loader(self.train_set, train=True, epoch=epoch)
        world, batch_size = self.group.world, self.config.batch_size
        total, seen = torch.zeros((), device=self.device), 0
        for step, (images, targets) in enumerate(self.batches(loader, epoch)):
            taught = None  # the teacher's logits for the batch, when they are cached
            if self.cached_logits is not None:
                targets, taught = targets[:, 0], self.cached_logits(targets[:, 1], self.device)
            soft_targets = targets
            if self.mixer is not None and taught is not None:
                images, soft_targets, taught = mix_with_teacher(
                    self.mixer, images, targets, taught, self.config.distill_temperature)
            elif self.mixer is not None:
                images, soft_targets = self.mixer(images, targets)
            with torch.autocast(
                self.device.type, torch.bfloat16, enabled=self.acceleration.autocast
            ):
                logits = self.trained(images)
                if self.teacher is None:
                    loss = self.criterion(logits, soft_targets)
                else:
                    if taught is None:  # consistent: the teacher sees this very batch
                        taught = self.teacher(images)
                    loss = self.criterion(logits, soft_targets, taught)
            self.optimizer.zero_grad(set_to_none=True)
            if world > 1:  # DDP averages the ranks' gradients: weigh each by its share
                (loss * loss_weight(batch_size, world, len(targets))).backward()
            else:
                loss.backward()
            if self.config.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
            self.optimizer.step()
            total += loss.detach() * len(targets)
            seen += len(targets)
            if on_step is not None:
                on_step(step + 1, len(loader))
        if world > 1:  # the whole group's mean loss and images
            total_sum, seen_sum = all_sum(total, self.device), all_sum(seen, self.device)
            return total_sum / max(seen_sum, 1), int(seen_sum)
        return float(total) / max(seen, 1), seen

    def evaluate(self, loader: DataLoader[Any], prefix: str) -> dict[str, Any]:
        return evaluate_model(
            self.model,
            loader,
            self.device,
            self.data.preprocessing,
            self.data.num_classes,
            prefix,
            self.acceleration,
        )

    def checkpoint_config(self) -> dict[str, Any]:
        return {
            "trial": self.config.to_dict(),
            "backbone": self.config.backbone,
            "classes": list(self.data.index.classes),
            "preprocessing": self.data.preprocessing.to_dict(),
            "frozen_stages": self.frozen_stages,
        }

    def save(self, target: Path, metrics: dict[str, Any], state: ckpt.TrainerState) -> Path:
        return ckpt.write_checkpoint(
            target,
            self.model,
            self.checkpoint_config(),
            {**_with_history(metrics, state), **self.notes},
            optimizer=self.optimizer,
            state=state,
        )


def _teacher(config: TrialConfig, data: PreparedData, device: torch.device) -> Teacher:
    assert config.teacher is not None
    loaded = load_checkpoint(Path(config.teacher), device)
    if loaded.classes != list(data.index.classes):
        raise ConfigError(
            f"teacher {config.teacher} was trained on classes {loaded.classes[:10]}, this "
            f"dataset has {list(data.index.classes)[:10]}; distill on the teacher's dataset"
        )
    return Teacher(loaded, data.preprocessing, device)


def _with_history(metrics: dict[str, Any], state: ckpt.TrainerState) -> dict[str, Any]:
    return {**metrics, "history": state.history}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
