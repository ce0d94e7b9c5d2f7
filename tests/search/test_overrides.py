"""Overrides are refused with one line, or every configuration they let the space produce is
one a trial can run."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from automl.errors import SpecError
from automl.search.spec import parse_spec
from tests.support import MINIMAL_JOB
from workers.config import OPTIMIZERS, SCHEDULES, TrialConfig


class DrawnTrial:
    """Stands in for an Optuna trial whose every answer hypothesis draws: each branch of the
    define-by-run space, and the ends of each range, get tried."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.data.draw(st.sampled_from(list(choices)), label=name)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return low + step * self.data.draw(st.integers(0, (high - low) // step), label=name)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        if step is not None:
            return low + step * self.data.draw(st.integers(0, int((high - low) // step)), label=name)
        return self.data.draw(st.floats(low, high), label=name)


# overrides that set parameters against each other: schedules, their epochs, lrs
OVERRIDE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "schedule": st.sampled_from(SCHEDULES),
    "optimizer": st.sampled_from(OPTIMIZERS),
    "warmup_epochs": st.integers(0, 12),
    "decay_epochs": st.integers(0, 12),
    "cycle_epochs": st.integers(0, 12),
    "plateau_patience": st.integers(0, 4),
    "milestones": st.lists(st.integers(0, 12), max_size=3),
    "decay_rate": st.sampled_from([0.0, 0.1, 0.5, 0.99, 1.0]),
    "lr": st.sampled_from([1e-6, 1e-4, 1e-2, 0.1, 1.0]),
    "warmup_lr": st.sampled_from([0.0, 1e-6, 1e-4, 1e-2, 0.1, 1.0]),
    "min_lr": st.sampled_from([0.0, 1e-6, 1e-3, 0.1]),
}


@st.composite
def overrides(draw: st.DrawFn) -> dict[str, Any]:
    """A `space:` of fixed values, choices and ranges for some of OVERRIDE_VALUES."""
    names = draw(st.lists(st.sampled_from(sorted(OVERRIDE_VALUES)), max_size=3, unique=True))
    space: dict[str, Any] = {}
    for name in names:
        values = OVERRIDE_VALUES[name]
        form = draw(st.sampled_from(["value", "choices", "range"]))
        if form == "choices" or name == "milestones":  # one list value is a list in a list
            space[name] = draw(st.lists(values, min_size=1, max_size=3))
        elif form == "range" and name not in ("schedule", "optimizer"):
            low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
            space[name] = {"low": low, "high": high}
        else:
            space[name] = draw(values)
    return space


def run_every_epoch(config: TrialConfig) -> None:
    """Build the trial's optimizer and schedule and step it through all its epochs."""
    import torch

    from workers.train.optimizer import create_optimizer
    from workers.train.schedules import EpochSchedule

    optimizer = create_optimizer(config, torch.nn.Linear(2, 2))
    schedule = EpochSchedule(config, optimizer)
    for epoch in range(config.epochs):
        optimizer.step()
        schedule.step(0.5 + epoch % 2)  # a metric that stalls, for plateau
        assert math.isfinite(schedule.lr)


@pytest.mark.parametrize("max_epochs", [1, 2, 3, 4, 5, 6, 8, 10, 13, 1000])
@given(space=overrides(), data=st.data())
@hypothesis_settings(max_examples=60, deadline=None, derandomize=True)
def test_every_configuration_the_space_can_produce_is_one_a_trial_can_run(
    max_epochs: int, space: dict[str, Any], data: st.DataObject
) -> None:
    """Whatever the budget (a single epoch included) and the overrides, the spec is refused with
    one line, or every configuration its space can produce is one the engine accepts and whose
    schedule runs all its epochs: a trial that cannot is an error on every retry (a multistep
    schedule over 1 epoch had milestones [0, 0])."""
    try:
        spec = parse_spec({**MINIMAL_JOB, "budget": {"max_epochs": max_epochs}, "space": space})
    except SpecError as error:
        assert "space." in str(error), str(error)  # refused, naming the field
        return
    sampled = spec.search_space().sample(DrawnTrial(data))  # type: ignore[arg-type]
    config = TrialConfig.from_dict({**sampled, **spec.trial_settings()})
    run_every_epoch(config)
