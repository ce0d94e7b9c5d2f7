"""Freeze-thaw on the replay's simulated cluster: pause a trial with its checkpoint, resume it later.

A paused run keeps its place in its recorded curve, and a resumed one goes on from its next
epoch, as a job's trial goes on from its checkpoint; its Optuna trial stays open meanwhile (one
curve, no epoch reported twice) and ends pruned if it is never resumed. The decisions are those
of the policy the job's own `Strategy` hands out (`Strategy.freeze_thaw()`, what a job's bridge
asks), through its hooks only (`should_pause`, `choose`, `evict`, `give_up`), seeing `Curve`s
with values as a job reports them (fractions) and the seconds each epoch took. As in a job, at
most `max_paused(workers)` trials stay paused: beyond it the worst is given up (pruned).

Pausing costs a checkpoint: the worker saving it is busy for `save_seconds` after the paused
epoch, and a resumed trial first loads it (`load_seconds`). The data records no checkpoint
sizes, so they are assumed from the backbone's parameter count (benchmarks/backbone_costs.json):
weights plus AdamW's two moments, 12 bytes a parameter, at 200 MB/s (a network volume), plus a
fixed 2 s to save (serializing, fsync) and 5 s to resume (a new trial actor, the model built,
the data loader's workers started). A 28 M-parameter convnext_tiny: 3.7 s to save, 6.7 s to
resume: about a tenth of its median epoch on the smallest datasets, a hundredth on big ones.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import TrialState

from automl.search.curve_model import CurveModel, fit
from automl.search.freeze_thaw import Curve
from automl.search.strategy import Strategy
from benchmarks import backbone_costs
from benchmarks.replay import MAX_EPOCHS, Pool, Run, best_trace

BYTES_PER_PARAM = 12  # fp32 weights + AdamW's two moments
THROUGHPUT = 200e6  # bytes a second, to and from the checkpoint volume
SAVE_FIXED, LOAD_FIXED = 2.0, 5.0
DEFAULT_PARAMS_M = 30.0  # a backbone the costs table does not have
# the replay's arms that pause; the `default-` and `freeze-thaw` ones start with the portfolio
ARMS = ("asha-promotion", "hyperband-pause", "default-promotion", "freeze-thaw")


def checkpoint_seconds(backbone: str, params: dict[str, dict[str, float]]) -> tuple[float, float]:
    """(save, load) seconds of a trial's checkpoint."""
    size = params.get(backbone, {}).get("params_m", DEFAULT_PARAMS_M) * 1e6 * BYTES_PER_PARAM
    return SAVE_FIXED + size / THROUGHPUT, LOAD_FIXED + size / THROUGHPUT


def recorded_curves(pools: Sequence[Pool]) -> list[list[float]]:
    """What a curve model is fitted on: every recorded run's values, as fractions."""
    return [[v / 100 for v in run.curve[:MAX_EPOCHS]] for pool in pools for run in pool.runs]


def held_out_model(pools: dict[str, Pool], dataset: str) -> CurveModel:
    """The curve model a job on `dataset` would ship with, fitted without it."""
    return fit(recorded_curves([p for d, p in pools.items() if d != dataset]),
               origin=f"without {dataset}")


@dataclasses.dataclass
class _Trial:
    trial: optuna.Trial
    run: Run
    curve: Curve
    save: float
    load: float


def drive_paused(strategy: Strategy, pool: Pool, workers: int,
                 horizon: float, seen: Callable[[float, Run, float], bool],
                 params: dict[str, dict[str, float]] | None = None,
                 log: list[tuple[float, str, int, int]] | None = None) -> dict[int, _Trial]:
    """`replay.drive` with pausing: `workers` slots; a slot runs a trial's epochs one by one
    (recorded seconds), saves a checkpoint when the strategy's freeze-thaw policy pauses it,
    and when free asks the policy's `choose` whether to resume a paused trial (after loading
    its checkpoint) or to start a new configuration from `strategy`. `log` gets (time, event,
    trial, epoch) for start, epoch, pause, resume, complete, pruned. Returns the trials by
    number."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    decision = strategy.freeze_thaw()
    if decision is None:
        raise ValueError(f"strategy.pruner is {strategy.pruner}, not freeze-thaw: nothing pauses")
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "replay")
    params = backbone_costs.load() if params is None else params
    trials: dict[int, _Trial] = {}
    curves: list[Curve] = []  # by number, the decision's view
    events: list[tuple[float, int, str, int]] = []  # (time, order, "epoch" | "free", number)
    order = itertools.count()

    def note(now: float, what: str, number: int, epoch: int) -> None:
        if log is not None:
            log.append((now, what, number, epoch))

    def set_state(number: int, state: str) -> None:
        t = trials[number]
        t.curve = curves[number] = dataclasses.replace(t.curve, state=state)

    def next_epoch(now: float, t: _Trial) -> None:
        epoch = t.curve.epochs + 1
        heapq.heappush(events, (now + t.run.cost[epoch - 1], next(order), "epoch", t.curve.number))

    def fill(now: float) -> None:
        paused = [c for c in curves if c.state == "paused"]
        number = decision.choose(paused, curves) if paused else None
        if number is not None:
            t = trials[number]
            set_state(number, "running")
            note(now, "resume", number, t.curve.epochs)
            next_epoch(now + t.load, t)
            return
        trial = strategy.ask(study)
        config = strategy.space.sample(trial)
        run = pool.nearest(config)
        number = len(curves)
        save, load = checkpoint_seconds(run.config["backbone"], params)
        curve = Curve(number, config, {}, {})
        trials[number] = _Trial(trial, run, curve, save, load)
        curves.append(curve)
        note(now, "start", number, 0)
        next_epoch(now, trials[number])

    for _ in range(workers):
        fill(0.0)
    while events:
        now, _, kind, number = heapq.heappop(events)
        if now > horizon:
            break
        if kind == "free":
            fill(now)
            continue
        t = trials[number]
        epoch = t.curve.epochs + 1
        raw = t.run.curve[epoch - 1]
        t.curve.values[epoch] = raw / 100
        t.curve.seconds[epoch] = t.run.cost[epoch - 1]
        note(now, "epoch", number, epoch)
        if seen(now, t.run, raw):
            break
        last = min(len(t.run.curve), MAX_EPOCHS)
        strategy.report(study, t.trial, epoch, raw / 100, last=epoch == last)
        if epoch == last:
            study.tell(t.trial, strategy.final_values(dict(t.curve.values), {}))
            set_state(number, "complete")
            note(now, "complete", number, epoch)
            fill(now)
        elif decision.should_pause(t.curve, curves):
            set_state(number, "paused")
            note(now, "pause", number, epoch)
            evicted = decision.evict([c for c in curves if c.state == "paused"], workers)
            if evicted is not None:  # beyond the bound: the worst is given up, pruned
                study.tell(trials[evicted].trial, state=TrialState.PRUNED)
                set_state(evicted, "pruned")
                note(now, "pruned", evicted, trials[evicted].curve.epochs)
            if evicted == number:  # stopped, not saved: its slot is free now
                fill(now)
            else:
                heapq.heappush(events, (now + t.save, next(order), "free", number))
        else:
            next_epoch(now, t)
    for number in decision.give_up(curves):
        study.tell(trials[number].trial, state=TrialState.PRUNED)
        set_state(number, "pruned")
        note(math.inf, "pruned", number, trials[number].curve.epochs)
    return trials


def simulate_paused(strategy: Strategy, pool: Pool, workers: int,
                    horizon: float) -> list[tuple[float, float]]:
    return best_trace(pool, lambda seen: drive_paused(strategy, pool, workers, horizon, seen))
