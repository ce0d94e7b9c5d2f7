"""Each LR schedule follows its textbook definition, warmup included, epoch by epoch."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.config import TrialConfig
from workers.train.optimizer import create_optimizer
from workers.train.schedules import EpochSchedule

LR, WARMUP_LR, MIN_LR, EPOCHS, WARMUP = 0.1, 0.01, 0.001, 12, 3


def trajectory(schedule: str, metrics: list[float] | None = None, **extra: object) -> list[float]:
    config = TrialConfig.from_dict(
        {
            "schedule": schedule,
            "lr": LR,
            "warmup_lr": WARMUP_LR,
            "min_lr": MIN_LR,
            "epochs": EPOCHS,
            "warmup_epochs": WARMUP,
            "optimizer": "sgd",
            **extra,
        }
    )
    optimizer = create_optimizer(config, torch.nn.Linear(4, 2))
    schedule_ = EpochSchedule(config, optimizer)
    values = []
    for epoch in range(EPOCHS):
        values.append(schedule_.lr)
        optimizer.step()
        schedule_.step(metrics[epoch] if metrics else 0.5)
    return values


def warmup_part() -> list[float]:
    return [WARMUP_LR + (LR - WARMUP_LR) * e / WARMUP for e in range(WARMUP)]


def expected(schedule: str) -> list[float]:
    after = range(EPOCHS - WARMUP)  # epochs since warmup ended
    main = {
        "constant": [LR for _ in after],
        "step": [LR * 0.1 ** (t // 4) for t in after],
        "multistep": [LR * 0.1 ** sum(t + WARMUP >= m for m in (6, 9)) for t in after],
        "cosine": [
            MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * t / (EPOCHS - WARMUP))) / 2
            for t in after
        ],
        "cyclic": [
            MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * (t % 3) / 3)) / 2 for t in after
        ],
    }[schedule]
    return warmup_part() + main


@pytest.mark.parametrize("schedule", ["constant", "step", "multistep", "cosine", "cyclic"])
def test_schedule_matches_its_definition(schedule: str) -> None:
    got = trajectory(schedule, decay_epochs=4, decay_rate=0.1, milestones=[6, 9], cycle_epochs=3)
    assert got == pytest.approx(expected(schedule), rel=1e-6)


def test_onecycle_rises_from_warmup_lr_to_lr_then_anneals() -> None:
    got = trajectory("onecycle")
    assert got[0] == pytest.approx(WARMUP_LR)
    assert max(got) == pytest.approx(LR) and got.index(max(got)) == WARMUP
    assert all(a < b for a, b in itertools.pairwise(got[: WARMUP + 1]))
    assert all(a > b for a, b in itertools.pairwise(got[WARMUP:]))
    assert got[-1] < LR * 0.05


def test_plateau_decays_only_when_the_metric_stalls() -> None:
    improving = [0.1 * e for e in range(EPOCHS)]
    assert trajectory("plateau", improving) == pytest.approx(
        warmup_part() + [LR] * (EPOCHS - WARMUP)
    )
    stalled = [0.5] * EPOCHS  # patience 2: decays after the third flat epoch past warmup
    got = trajectory("plateau", stalled, plateau_patience=2, decay_rate=0.5)
    assert got[:WARMUP] == pytest.approx(warmup_part())
    assert got[WARMUP : WARMUP + 4] == pytest.approx([LR] * 4)
    assert got[WARMUP + 4] == pytest.approx(LR * 0.5)


def test_no_warmup_starts_at_lr() -> None:
    config = TrialConfig(schedule="cosine", lr=LR, epochs=5, warmup_epochs=0)
    optimizer = create_optimizer(config, torch.nn.Linear(4, 2))
    assert EpochSchedule(config, optimizer).lr == pytest.approx(LR)


@pytest.mark.parametrize("warmup_lr", [0.0, 2 * LR])
def test_a_warmup_from_zero_or_from_above_lr_is_a_straight_line_to_lr(warmup_lr: float) -> None:
    """Both are settings a trial accepts (torch's LinearLR refuses them); one-cycle takes them
    too."""
    got = trajectory("constant", warmup_lr=warmup_lr)
    ramp = [warmup_lr + (LR - warmup_lr) * e / WARMUP for e in range(WARMUP)]
    assert got == pytest.approx(ramp + [LR] * (EPOCHS - WARMUP))
    onecycle = trajectory("onecycle", warmup_lr=warmup_lr)
    assert onecycle[0] == pytest.approx(max(warmup_lr, 1e-12)) and max(onecycle) >= LR


# Every schedule's learning rate per epoch, pinned: written from the torch-based schedules this
# project ran before it used timm's, so the change of implementation is provably no change of
# behaviour. Each case: settings, and the objective's value per epoch (plateau reads it).
STALLS = [0.5, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
CASES: dict[str, dict[str, Any]] = {
    **{
        f"{schedule}-warmup{warmup}": {"schedule": schedule, "warmup_epochs": warmup}
        for schedule in ("constant", "step", "multistep", "cosine", "cyclic", "onecycle",
                         "plateau")
        for warmup in (0, 1, 3)
    },
    "cosine-min_lr0": {"schedule": "cosine", "min_lr": 0.0, "warmup_epochs": 2},
    "cosine-1epoch": {"schedule": "cosine", "epochs": 1, "warmup_epochs": 0},
    "cosine-warmup-from-0": {"schedule": "cosine", "warmup_lr": 0.0},
    "cosine-warmup-from-above": {"schedule": "cosine", "warmup_lr": 2 * LR},
    "step-every-epoch": {"schedule": "step", "decay_epochs": 1, "decay_rate": 0.5},
    "multistep-early": {"schedule": "multistep", "milestones": [4, 5, 11], "warmup_epochs": 3},
    "multistep-inside-warmup": {"schedule": "multistep", "milestones": [2, 3, 6],
                                "warmup_epochs": 3},
    "multistep-2epochs": {"schedule": "multistep", "epochs": 2, "milestones": [1],
                          "warmup_epochs": 0},
    "cyclic-4": {"schedule": "cyclic", "cycle_epochs": 4, "warmup_epochs": 2},
    "plateau-min": {"schedule": "plateau", "objective": "val_loss", "plateau_patience": 1,
                    "metrics": [0.9, 0.8, 0.8, 0.8, 0.7, 0.75, 0.8, 0.8, 0.8, 0.6, 0.6, 0.6]},
    "plateau-patience1": {"schedule": "plateau", "plateau_patience": 1, "decay_rate": 0.5,
                          "min_lr": 0.02},
    "onecycle-2epochs": {"schedule": "onecycle", "epochs": 2, "warmup_epochs": 0},
}
TABLE = Path(__file__).with_name("schedule_lrs.json")


def case_config(settings: dict[str, Any]) -> tuple[TrialConfig, list[float]]:
    settings = dict(settings)
    metrics = settings.pop("metrics", STALLS)
    config = TrialConfig.from_dict({
        "lr": LR, "warmup_lr": WARMUP_LR, "min_lr": MIN_LR, "epochs": EPOCHS,
        "decay_epochs": 4, "decay_rate": 0.1, "milestones": [6, 9], "cycle_epochs": 3,
        "optimizer": "sgd", **settings,
    })
    return config, metrics[: config.epochs]


def case_lrs(config: TrialConfig, metrics: list[float]) -> list[float]:
    """The learning rate each epoch trains at."""
    optimizer = create_optimizer(config, torch.nn.Linear(4, 2))
    schedule = EpochSchedule(config, optimizer)
    lrs = []
    for metric in metrics:
        lrs.append(schedule.lr)
        optimizer.step()
        schedule.step(metric)
    return lrs


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_learning_rate_of_every_epoch_is_the_pinned_one(case: str) -> None:
    pinned = json.loads(TABLE.read_text())[case]
    config, metrics = case_config(CASES[case])
    assert case_lrs(config, metrics) == pytest.approx(pinned, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_schedule_goes_on_where_it_stood(case: str) -> None:
    """`fast_forward` from the recorded metrics brings a fresh schedule to the same learning rate
    as the run that never stopped, after any number of epochs."""
    config, metrics = case_config(CASES[case])
    straight = case_lrs(config, metrics)
    for done in range(1, len(metrics)):
        optimizer = create_optimizer(config, torch.nn.Linear(4, 2))
        schedule = EpochSchedule(config, optimizer)
        schedule.fast_forward(metrics[:done])
        assert schedule.lr == pytest.approx(straight[done], rel=1e-9, abs=1e-15), done


if __name__ == "__main__":  # writes the table: only ever from the implementation it pins
    table = {case: case_lrs(*case_config(settings)) for case, settings in sorted(CASES.items())}
    TABLE.write_text(json.dumps(table, indent=1) + "\n")


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "plateau", "multistep"])
def test_layer_decay_scales_each_group_and_the_reported_lr_is_the_base_one(schedule: str) -> None:
    """timm's optimizer gives each layer group an `lr_scale` under `layer_decay`; every schedule
    applies it, and the learning rate a trial reports is the unscaled one."""
    config = TrialConfig(schedule=schedule, lr=LR, epochs=6, warmup_epochs=2, layer_decay=0.5,
                         optimizer="sgd", backbone="test_resnet.r160_in1k")
    from workers.model.backbone import create_backbone

    optimizer = create_optimizer(config, create_backbone(config, 3))
    plain = create_optimizer(config.replace(layer_decay=None), torch.nn.Linear(4, 2))
    scaled, unscaled = EpochSchedule(config, optimizer), EpochSchedule(config.replace(
        layer_decay=None), plain)
    for _ in range(config.epochs):
        assert scaled.lr == pytest.approx(unscaled.lr, rel=1e-9)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(scaled.lr * group["lr_scale"], rel=1e-9)
        optimizer.step()
        plain.step()
        scaled.step(0.5)
        unscaled.step(0.5)
