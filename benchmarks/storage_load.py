"""Storage under load: W concurrent writers on one study in PostgreSQL, at growing study sizes.

    automl-bench storage [--url URL] [--writers 32] [--sizes 1000,10000] [--epochs 5] [--trials 2]

(URL defaults to $AUTOML_TEST_DATABASE_URL, else the local test database.)

One fresh study (a unique name, deleted afterwards) is pre-filled in bulk to each size with
finished trials shaped like a job's: parameters drawn from the default space's real
distributions, one intermediate value per epoch up to where Hyperband would have stopped them,
the rung attributes the pruner writes, and the two user attrs the bridge writes. Then W writer
processes each run a few trials through the same calls, in the same order, as the bridge
(`automl.tune.bridge`) makes them from a job's driver, with the default `Strategy` a job gets (random
sampler, successive halving) and the real storage constructor (`storage.optuna_storage`):

    ask           study.ask() + Strategy.suggest (define-by-run sampling) + the 2 user attrs
    report        trial.report(value, epoch)
    should_prune  trial.should_prune()        (skipped at the last epoch, as the bridge does)
    tell          storage.get_trial + study.tell(..., skip_if_finished=True)

Writers are processes, not threads: a job's driver is its own process with its own connection
pool and trial cache, and 32 threads would share one GIL, so every writer's latency would be the
sum of all the others' Python time rather than its own database round trips. The writers are
forked from a process that has just loaded the study (a driver that has been running a while has
its trial cache warm); that one-time full read is timed on its own ("driver's first read"), and
so is loading the study again from the same storage object, which `automl serve` does for every
GET /jobs/{id}/trials ("read again"). On a machine with fewer cores than writers the writers also
wait for a core: the table says how many cores there were, and gives each call's own CPU time,
which does not depend on that wait.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import signal
import statistics
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState
from sqlalchemy import create_engine, delete, func, insert, select
from sqlalchemy.engine import Engine

from automl.search._optuna import storage_of, trial_id
from automl.search.keys import CONFIG as CONFIG_ATTR
from automl.search.keys import RAY_TRIAL_ID
from automl.search.ranking import best_value
from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from storage.optuna_storage import models, optuna_storage

OPS = ("ask", "report", "should_prune", "tell")
DEFAULT_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Row:
    size: int  # finished trials in the study when the writers started
    op: str
    calls: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    cpu_p50_ms: float  # the writer's own CPU time in the call: no wait for the database or a core
    cpu_p95_ms: float


@dataclass(frozen=True)
class Result:
    rows: list[Row]
    load_s: dict[int, float]  # a driver's first read of the study, per size
    reload_s: dict[int, float]  # load_study + get_trials again on the same storage (the service)
    fill_s: dict[int, float]  # bulk pre-fill up to each size
    writers: int
    cpus: int


def run(
    url: str = DEFAULT_URL,
    writers: int = 32,
    sizes: Sequence[int] = (1000, 10000),
    epochs: int = 5,
    trials: int = 2,
    pause: float = 0.0,
    seed: int = 0,
) -> Result:
    strategy = Strategy(SearchSpace(max_epochs=epochs))
    name = f"bench-storage-{uuid.uuid4().hex[:10]}"
    engine = create_engine(url)
    rows: list[Row] = []
    load_s: dict[int, float] = {}
    reload_s: dict[int, float] = {}
    fill_s: dict[int, float] = {}
    rng = random.Random(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial from 32 writers
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if threading.current_thread() is threading.main_thread():
        # a SIGTERM (a CI timeout) still stops the writers and deletes the study
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        strategy.create_study(optuna_storage(url), name)
        for size in sorted(sizes):
            started = time.perf_counter()
            _fill(engine, name, strategy, size, rng)
            fill_s[size] = time.perf_counter() - started
            engine.dispose()
            timings, load_s[size], reload_s[size] = _writers(
                url, name, strategy, writers, trials, pause
            )
            for op in OPS:
                wall = sorted(w for w, _ in timings[op])
                cpu = sorted(c for _, c in timings[op])
                rows.append(Row(size, op, len(wall), *_percentiles(wall), *_percentiles(cpu)[:2]))
    finally:
        _delete_study(engine, name)
        engine.dispose()
    return Result(rows, load_s, reload_s, fill_s, writers, os.cpu_count() or 1)


def _percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (math.nan, math.nan, math.nan)
    cuts = statistics.quantiles(values, n=20, method="inclusive") if len(values) > 1 else values * 19
    return (1000 * statistics.median(values), 1000 * cuts[18], 1000 * values[-1])


# ---- the writers -------------------------------------------------------------------------------


def _writers(
    url: str, name: str, strategy: Strategy, writers: int, trials: int, pause: float
) -> tuple[dict[str, list[tuple[float, float]]], float, float]:
    storage = optuna_storage(url)
    started = time.perf_counter()
    study = strategy.load_study(storage, name)
    study.get_trials(deepcopy=False)  # the full read a driver does once; later reads are deltas
    load = time.perf_counter() - started
    # what `automl serve` does per GET /jobs/{id}/trials, and `automl pull`: a study loaded again
    # from the storage object it keeps
    started = time.perf_counter()
    optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    reload = time.perf_counter() - started
    _engine_of(study).dispose()  # no pooled connection may cross the fork
    context = mp.get_context("fork")
    queue: mp.Queue[tuple[dict[str, list[tuple[float, float]]], str | None]] = context.Queue()
    barrier = context.Barrier(writers)
    procs = [
        context.Process(target=_writer, args=(study, strategy, i, trials, pause, barrier, queue),
                        daemon=True)
        for i in range(writers)
    ]
    timings: dict[str, list[tuple[float, float]]] = {op: [] for op in OPS}
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            times, error = queue.get(timeout=300)
            if error:
                raise RuntimeError(error)
            for op, values in times.items():
                timings[op].extend(values)
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    return timings, load, reload


def _writer(
    parent: optuna.Study, strategy: Strategy, index: int, trials: int, pause: float,
    barrier: Any, queue: Any,
) -> None:
    try:
        queue.put((_write(parent, strategy, index, trials, pause, barrier), None))
    except BaseException:
        queue.put(({}, f"writer {index}: {traceback.format_exc()}"))


def _write(
    parent: optuna.Study, strategy: Strategy, index: int, trials: int, pause: float, barrier: Any
) -> dict[str, list[tuple[float, float]]]:
    _engine_of(parent).dispose(close=False)  # the parent's pool stays the parent's
    # the writer's own sampler and pruner, over the storage (and warm trial cache) it inherited
    study = strategy.load_study(storage_of(parent), parent.study_name, reseed=index + 1)
    rng = random.Random(index)
    times: dict[str, list[tuple[float, float]]] = {op: [] for op in OPS}
    clock = _Clock(times)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    barrier.wait(timeout=120)
    for t in range(trials):
        with clock("ask"):
            trial = strategy.ask(study)
            config = strategy.space.sample(trial)
            trial.set_user_attr(RAY_TRIAL_ID, f"w{index}_{t}")
            trial.set_user_attr(CONFIG_ATTR, config)
        curve = _curve(rng)
        pruned = False
        for epoch in range(1, strategy.max_epochs + 1):
            if pause:
                time.sleep(pause)  # the epoch's training
            with clock("report"):
                trial.report(curve(epoch), epoch)
            if epoch >= strategy.max_epochs:
                break
            with clock("should_prune"):
                pruned = trial.should_prune()
            if pruned:
                break
        with clock("tell"):
            if not storage_of(study).get_trial(trial_id(trial)).state.is_finished():
                if pruned:
                    study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
                else:
                    value = best_value(trial._cached_frozen_trial.intermediate_values.values(), maximize)
                    study.tell(trial.number, value, skip_if_finished=True)
    return times


def best_of(values: dict[int, float], maximize: bool) -> float | None:
    """The value a trial is told: its best epoch's."""
    finite = [v for v in values.values() if not math.isnan(v)]
    if not finite:
        return None
    return max(finite) if maximize else min(finite)


class _Clock:
    """`with clock(op):` records the wall time and this process's CPU time of the block."""

    def __init__(self, times: dict[str, list[tuple[float, float]]]) -> None:
        self.times = times

    @contextmanager
    def __call__(self, op: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.times[op].append((time.perf_counter() - wall, time.process_time() - cpu))


def _engine_of(study: optuna.Study) -> Engine:
    storage: Any = storage_of(study)
    backend = getattr(storage, "_backend", storage)  # optuna's _CachedStorage wraps RDBStorage
    engine: Engine = backend.engine
    return engine


def _curve(rng: random.Random) -> Any:
    """A validation-accuracy learning curve: rises to a per-trial ceiling, with noise."""
    ceiling, speed = rng.uniform(0.4, 0.95), rng.uniform(0.3, 1.5)
    return lambda epoch: ceiling * (1 - math.exp(-speed * epoch)) + rng.gauss(0, 0.01)


# ---- the bulk pre-fill -------------------------------------------------------------------------


class _Draw:
    """Stands in for an Optuna trial under `SearchSpace.sample`: draws uniformly, records the
    distributions, so pre-filled trials carry exactly the parameters a job's trials carry."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._keep(name, self.rng.choice(list(choices)), CategoricalDistribution(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        value = self.rng.randrange(low, high + 1, step)
        return int(self._keep(name, value, IntDistribution(low, high, log=log, step=step)))

    def suggest_float(
        self, name: str, low: float, high: float, log: bool = False, step: float | None = None
    ) -> float:
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
        else:
            value = self.rng.uniform(low, high)
        return float(self._keep(name, value, FloatDistribution(low, high, log=log, step=step)))

    def _keep(self, name: str, value: Any, distribution: BaseDistribution) -> Any:
        self.params[name], self.distributions[name] = value, distribution
        return value


def _fill(engine: Engine, name: str, strategy: Strategy, size: int, rng: random.Random) -> None:
    """Add finished trials until the study holds `size` trials: a few bulk INSERTs, not one
    transaction per trial. Rows are built the way RDBStorage writes them (its own tables)."""
    t_trials, t_params = models.TrialModel.__table__, models.TrialParamModel.__table__
    t_values = models.TrialValueModel.__table__
    t_steps = models.TrialIntermediateValueModel.__table__
    t_user = models.TrialUserAttributeModel.__table__
    t_system = models.TrialSystemAttributeModel.__table__
    finite_value = models.TrialValueModel.TrialValueType.FINITE
    finite_step = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    epochs = strategy.max_epochs
    # Hyperband (min 1, factor 3) promotes a third of each rung: rung ends at epochs 1, 3, 9...
    rungs = [e for e in (1, 3, 9, 27) if e < epochs]
    with engine.begin() as conn:
        study_id = conn.execute(
            select(models.StudyModel.study_id).where(models.StudyModel.study_name == name)
        ).scalar_one()
        have = conn.execute(
            select(func.count()).select_from(t_trials).where(t_trials.c.study_id == study_id)
        ).scalar_one()
        if have >= size:
            return
        now = datetime.now()
        drafts = []
        for number in range(have, size):
            draw = _Draw(rng)
            config = strategy.space.sample(draw)  # type: ignore[arg-type]
            curve = _curve(rng)
            last = epochs
            for rung in rungs:
                if rng.random() < 2 / 3:
                    last = rung
                    break
            steps = {e: curve(e) for e in range(1, last + 1)}
            drafts.append((number, draw, config, steps, last))
        ids = conn.execute(
            insert(t_trials).returning(t_trials.c.trial_id, sort_by_parameter_order=True),
            [
                {
                    "number": number, "study_id": study_id,
                    "state": TrialState.COMPLETE if last == epochs else TrialState.PRUNED,
                    "datetime_start": now - timedelta(minutes=10),
                    "datetime_complete": now,
                }
                for number, _, _, _, last in drafts
            ],
        ).scalars().all()
        params, values, steps_rows, user, system = [], [], [], [], []
        for trial_id, (number, draw, config, steps, last) in zip(ids, drafts, strict=True):
            for key, value in draw.params.items():
                dist = draw.distributions[key]
                params.append({"trial_id": trial_id, "param_name": key,
                               "param_value": dist.to_internal_repr(value),
                               "distribution_json": distribution_to_json(dist)})
            for step, value in steps.items():
                steps_rows.append({"trial_id": trial_id, "step": step, "intermediate_value": value,
                                   "intermediate_value_type": finite_step})
            if last == epochs:
                values.append({"trial_id": trial_id, "objective": 0,
                               "value": max(steps.values()), "value_type": finite_value})
            for i, rung in enumerate(r for r in rungs if r <= last):
                system.append({"trial_id": trial_id, "key": f"completed_rung_{i}",
                               "value_json": json.dumps(steps[rung])})
            user.append({"trial_id": trial_id, "key": RAY_TRIAL_ID,
                         "value_json": json.dumps(f"prefill_{number}")})
            user.append({"trial_id": trial_id, "key": CONFIG_ATTR,
                         "value_json": json.dumps(config)})
        for table, batch in ((t_params, params), (t_steps, steps_rows), (t_values, values),
                             (t_user, user), (t_system, system)):
            if batch:
                conn.execute(insert(table), batch)


def _delete_study(engine: Engine, name: str) -> None:
    """Delete the study with a few DELETEs (Optuna's delete_study loads every row first)."""
    studies = models.StudyModel.__table__
    trials = models.TrialModel.__table__
    with engine.begin() as conn:
        study_id = conn.execute(
            select(studies.c.study_id).where(studies.c.study_name == name)
        ).scalar_one_or_none()
        if study_id is None:
            return
        ids = select(trials.c.trial_id).where(trials.c.study_id == study_id).scalar_subquery()
        for model in (models.TrialParamModel, models.TrialValueModel,
                      models.TrialIntermediateValueModel, models.TrialUserAttributeModel,
                      models.TrialSystemAttributeModel, models.TrialHeartbeatModel):
            table = model.__table__
            conn.execute(delete(table).where(table.c.trial_id.in_(ids)))
        conn.execute(delete(trials).where(trials.c.study_id == study_id))
        for model in (models.StudyDirectionModel, models.StudyUserAttributeModel,
                      models.StudySystemAttributeModel):
            table = model.__table__
            conn.execute(delete(table).where(table.c.study_id == study_id))
        conn.execute(delete(studies).where(studies.c.study_id == study_id))

