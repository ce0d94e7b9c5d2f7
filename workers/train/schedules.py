"""Learning-rate schedule, stepped once per epoch: timm's schedulers (`timm.scheduler`).

Every schedule gets the same warmup: a linear ramp from `warmup_lr` to `lr` over
`warmup_epochs` (timm's `warmup_t` with `warmup_prefix`), after which the schedule proper runs
over the remaining epochs. Two schedules timm does not keep are torch's: one-cycle (timm has
none) and plateau (timm's `PlateauLRScheduler` is deprecated; torch's `ReduceLROnPlateau` runs
after timm's warmup). A schedule's state is never saved: `EpochSchedule.fast_forward` replays it
from the epoch count and the recorded metric history, which is exact and keeps checkpoints free
of pickles. tests/workers/train/schedule_lrs.json pins every schedule's learning rate per epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch.optim import lr_scheduler

from workers.config import TrialConfig


class EpochSchedule:
    """One interface over the schedules, plateau included: `step(metric)` once per epoch."""

    def __init__(self, config: TrialConfig, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.epoch = 0
        self._warmup_epochs = config.warmup_epochs
        self._timm: Scheduler | None = None
        self._torch: lr_scheduler.LRScheduler | None = None
        self._plateau: lr_scheduler.ReduceLROnPlateau | None = None
        if config.schedule == "onecycle":
            self._torch = _one_cycle(config, optimizer)
            return
        self._timm = _timm_schedule(config, optimizer)
        if config.schedule == "plateau":
            self._plateau = lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if config.maximize else "min",
                factor=config.decay_rate,
                patience=config.plateau_patience,
                min_lr=config.min_lr,
            )

    def step(self, metric: float | None = None) -> None:
        """Call at the end of each epoch with that epoch's objective value."""
        self.epoch += 1
        if self._plateau is not None and self.epoch > self._warmup_epochs:
            self._plateau.step(metric if metric is not None else float("nan"))
        elif self._timm is not None:
            self._timm.step(self.epoch)
        elif self._torch is not None:
            self._torch.step()

    def fast_forward(self, metrics: Sequence[float]) -> None:
        """Bring a fresh schedule to where it stood after `len(metrics)` epochs."""
        with warnings.catch_warnings():  # no optimizer.step() here, by design
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
            for metric in metrics:
                self.step(metric)

    @property
    def lr(self) -> float:
        """The base learning rate (a group's own under `layer_decay` is this times its
        `lr_scale`, which timm's schedulers apply)."""
        group = self.optimizer.param_groups[0]
        return float(group["lr"] / group.get("lr_scale", 1.0))


def _timm_schedule(config: TrialConfig, optimizer: torch.optim.Optimizer) -> Scheduler:
    """The warmup, then the schedule proper counted from its end (plateau: a constant one, until
    torch's `ReduceLROnPlateau` takes over)."""
    warmup = config.warmup_epochs
    common: dict[str, Any] = {
        "warmup_t": warmup, "warmup_lr_init": config.warmup_lr, "warmup_prefix": True
    }
    name = config.schedule
    if name in ("constant", "plateau"):
        return StepLRScheduler(optimizer, decay_t=config.epochs, decay_rate=1.0, **common)
    if name == "step":
        return StepLRScheduler(
            optimizer, decay_t=config.decay_epochs, decay_rate=config.decay_rate, **common
        )
    if name == "multistep":
        # timm decays at milestone - 1 (its convention, kept on purpose); a trial's milestones
        # are the epochs whose learning rate is the decayed one, hence + 1
        decay_t = sorted(m - warmup + 1 for m in config.milestones)
        return MultiStepLRScheduler(
            optimizer, decay_t=decay_t, decay_rate=config.decay_rate, **common
        )
    if name == "cosine":
        return CosineLRScheduler(
            optimizer, t_initial=max(1, config.epochs - warmup), lr_min=config.min_lr, **common
        )
    if name == "cyclic":  # SGDR: cosine cycles of cycle_epochs, each restarting at lr
        return CosineLRScheduler(
            optimizer,
            t_initial=config.cycle_epochs,
            lr_min=config.min_lr,
            cycle_limit=config.epochs // config.cycle_epochs + 1,
            **common,
        )
    raise ValueError(f"unknown schedule {name!r}")


def _one_cycle(config: TrialConfig, optimizer: torch.optim.Optimizer) -> lr_scheduler.OneCycleLR:
    """One-cycle's rising phase is its warmup: warmup_lr -> lr over warmup_epochs (or the first
    30% of the epochs when warmup_epochs is 0), then cosine annealing to min_lr. Each group's
    peak is scaled by its `lr_scale` (layer_decay), as timm's schedulers scale theirs."""
    warmup = config.warmup_epochs
    pct_start = (warmup + 1) / (config.epochs + 1) if warmup else 0.3
    start = max(config.warmup_lr, 1e-12)  # OneCycleLR divides by either end: never by 0
    return lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[config.lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups],
        total_steps=config.epochs + 1,
        pct_start=pct_start,
        div_factor=config.lr / start,
        final_div_factor=start / max(config.min_lr, 1e-12),
        cycle_momentum=False,
    )
