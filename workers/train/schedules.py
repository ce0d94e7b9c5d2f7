"""Learning-rate schedule (torch.optim.lr_scheduler), stepped once per epoch.

Every schedule gets the same warmup: a linear ramp from `warmup_lr` to `lr` over
`warmup_epochs`, after which the schedule proper runs over the remaining epochs. A schedule's
state is never saved: `EpochSchedule.fast_forward` replays it from the epoch count and the
recorded metric history, which is exact and keeps checkpoints free of pickles.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch.optim import lr_scheduler

from workers.config import TrialConfig


class EpochSchedule:
    """One interface over torch's schedulers, plateau included: `step(metric)` once per epoch."""

    def __init__(self, config: TrialConfig, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.epoch = 0
        self._warmup_epochs = config.warmup_epochs
        self._plateau: lr_scheduler.ReduceLROnPlateau | None = None
        self._warmup: lr_scheduler.LRScheduler | None = None
        self._torch: lr_scheduler.LRScheduler | None = None
        if config.schedule == "plateau":
            # ReduceLROnPlateau cannot sit inside SequentialLR, so warmup runs beside it.
            if config.warmup_epochs:
                self._warmup = _linear_warmup(config, optimizer)
            self._plateau = lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="max" if config.maximize else "min",
                factor=config.decay_rate,
                patience=config.plateau_patience,
                min_lr=config.min_lr,
            )
        else:
            self._torch = _torch_schedule(config, optimizer)

    def step(self, metric: float | None = None) -> None:
        """Call at the end of each epoch with that epoch's objective value."""
        self.epoch += 1
        if self._torch is not None:
            self._torch.step()
        elif self._warmup is not None and self.epoch <= self._warmup_epochs:
            self._warmup.step()
        elif self._plateau is not None:
            self._plateau.step(metric if metric is not None else float("nan"))

    def fast_forward(self, metrics: Sequence[float]) -> None:
        """Bring a fresh schedule to where it stood after `len(metrics)` epochs."""
        with warnings.catch_warnings():  # no optimizer.step() here, by design
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
            for metric in metrics:
                self.step(metric)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def _linear_warmup(config: TrialConfig, optimizer: torch.optim.Optimizer) -> lr_scheduler.LambdaLR:
    """`warmup_lr` to `lr` in a straight line. Not torch's LinearLR: it refuses a start of 0 or
    above `lr`, both of which a trial's settings (and so a search space) allow."""
    start, epochs = config.warmup_lr / config.lr, config.warmup_epochs
    return lr_scheduler.LambdaLR(optimizer, lambda epoch: start + (1 - start) * min(epoch, epochs) / epochs)


def _torch_schedule(
    config: TrialConfig, optimizer: torch.optim.Optimizer
) -> lr_scheduler.LRScheduler:
    warmup = config.warmup_epochs
    if config.schedule == "onecycle":
        # One-cycle's rising phase is its warmup: warmup_lr -> lr over warmup_epochs (or the
        # first 30% of the epochs when warmup_epochs is 0), then cosine annealing to min_lr.
        pct_start = (warmup + 1) / (config.epochs + 1) if warmup else 0.3
        start = max(config.warmup_lr, 1e-12)  # OneCycleLR divides by either end: never by 0
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=config.epochs + 1,
            pct_start=pct_start,
            div_factor=config.lr / start,
            final_div_factor=start / max(config.min_lr, 1e-12),
            cycle_momentum=False,
        )
    main = _main_schedule(config, optimizer, config.epochs - warmup)
    if warmup == 0:
        return main
    return lr_scheduler.SequentialLR(
        optimizer, [_linear_warmup(config, optimizer), main], milestones=[warmup]
    )


def _main_schedule(
    config: TrialConfig, optimizer: torch.optim.Optimizer, epochs: int
) -> lr_scheduler.LRScheduler:
    name = config.schedule
    if name == "constant":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "step":
        return lr_scheduler.StepLR(
            optimizer, step_size=config.decay_epochs, gamma=config.decay_rate
        )
    if name == "multistep":
        milestones = [m - config.warmup_epochs for m in config.milestones]
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=config.decay_rate)
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=config.min_lr)
    if name == "cyclic":  # SGDR: cosine cycles of cycle_epochs, each restarting at lr
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=config.cycle_epochs, eta_min=config.min_lr
        )
    raise ValueError(f"unknown schedule {name!r}")
