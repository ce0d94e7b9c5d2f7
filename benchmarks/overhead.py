"""Orchestration overhead: the same trials through `automl run` vs the engine in a plain loop.

Both arms train the identical configuration (every parameter fixed, one trial at a time, all
CPUs/GPU to that trial) N times and score the best on the test split once. The ratio of wall
times is what the service costs; the breakdown says where it goes: starting Ray, starting trials
(actors, imports, model and data set-up), per-epoch checkpoint persistence and reporting,
database calls of the bridge, the final test evaluation and publishing.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.jobs.driver import ensure_ray, run_job
from automl.search.spec import JobSpec, parse_spec
from automl.settings import Settings
from workers.config import TrialConfig
from workers.predict import evaluate_checkpoint, load_checkpoint
from workers.train.loop import train


@dataclass(frozen=True)
class Overhead:
    trials: int
    plain_wall: float
    plain_steps: float  # sum of epoch_seconds (train + eval steps) in the plain loop
    automl_wall: float
    automl_steps: float
    breakdown: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.automl_wall / self.plain_wall

    @property
    def orchestration(self) -> float:
        """Seconds automl spends outside train/eval steps beyond what the plain loop spends there.

        Step times wander by ±10% from run to run on a shared 2-core machine, which would swamp
        a few seconds of orchestration in the raw wall-time ratio; this difference does not.
        """
        return (self.automl_wall - self.automl_steps) - (self.plain_wall - self.plain_steps)

    @property
    def fixed(self) -> float:
        """Once per job: starting Ray and the first trial's worker process."""
        return sum(v for k, v in self.breakdown.items() if k.startswith(("ray start", "first")))

    @property
    def per_trial(self) -> float:
        return (self.orchestration - self.fixed) / self.trials


def fixed_space(backbone: str, img_size: int) -> dict[str, Any]:
    return {
        "backbone": backbone, "pretrained": False, "img_size": img_size, "freeze_stages": 0,
        "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01, "schedule": "cosine",
        "warmup_epochs": 0, "augment": "basic", "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
        "label_smoothing": 0.0, "drop_path_rate": 0.0, "batch_size": 64, "seed": 0,
    }


def run(
    trials: int = 4, epochs: int = 10, img_size: int = 64, backbone: str = "test_resnet.r160_in1k"
) -> Overhead:
    space = fixed_space(backbone, img_size)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        plain_wall, plain_steps = _plain(space, trials, epochs, Path(tmp) / "plain")
        automl_wall, automl_steps, breakdown = _automl(space, trials, epochs, Path(tmp) / "automl")
    return Overhead(trials, plain_wall, plain_steps, automl_wall, automl_steps, breakdown)


def _plain(space: dict[str, Any], trials: int, epochs: int, root: Path) -> tuple[float, float]:
    config = TrialConfig.from_dict({**space, "epochs": epochs, "source": "builtin:digits"})
    started = time.perf_counter()
    steps, best = 0.0, None
    for trial in range(trials):
        summary = train(config, root / str(trial))
        steps += sum(h["epoch_seconds"] for h in summary.history)
        if best is None or summary.best_value > best[0]:
            best = (summary.best_value, summary.best_checkpoint)
    assert best is not None and best[1] is not None
    evaluate_checkpoint(load_checkpoint(best[1]), "test")
    return time.perf_counter() - started, steps


class _Clock:
    """Bridge events with their times: when each trial was suggested and first reported."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}
        self.first_report: dict[int, float] = {}

    def on_event(
        self, kind: str, number: int, value: float | None = None, epoch: int | None = None,
        note: str | None = None,
    ) -> None:
        now = time.perf_counter()
        if kind == "start":
            self.started[number] = now
        elif kind == "report":
            self.first_report.setdefault(number, now)


def _one_at_a_time(name: str, space: dict[str, Any], trials: int, epochs: int,
                   strategy: dict[str, Any], **extra: Any) -> JobSpec:
    """A job on the digits whose trials run one at a time, each with every CPU."""
    return parse_spec({
        "name": name,
        "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": trials, "max_epochs": epochs},
        "max_concurrent_trials": 1,
        "resources": {"cpu": os.cpu_count() or 1},
        "strategy": {"seed": 0, "warm_start": False, **strategy},
        "space": space,
        **extra,
    })


def _automl(
    space: dict[str, Any], trials: int, epochs: int, root: Path
) -> tuple[float, float, dict[str, float]]:
    from ray.tune import ExperimentAnalysis

    spec = _one_at_a_time("overhead", space, trials, epochs, {"pruner": "none"})
    settings = Settings(home=root)
    clock = _Clock()
    started = time.perf_counter()
    ensure_ray(None)
    ray_start = time.perf_counter() - started
    outcome = run_job(spec, "overhead", settings, events=clock)
    wall = time.perf_counter() - started
    assert outcome.state == "succeeded", outcome.error
    # one trial at a time: Ray's trial ids sort in the order the study numbered the trials
    frames = dict(enumerate(sorted(
        ExperimentAnalysis(str(settings.runs_path / "overhead")).trial_dataframes.values(),
        key=lambda frame: str(frame["trial_id"].iloc[0]),
    )))
    steps = setup = per_epoch = 0.0
    launch: dict[int, float] = {}  # suggest -> the function running in its worker
    for number, frame in frames.items():
        steps += float(frame["epoch_seconds"].sum())
        first = frame.iloc[0]
        setup += float(first["time_this_iter_s"] - first["epoch_seconds"])
        per_epoch += float((frame["time_this_iter_s"] - frame["epoch_seconds"]).iloc[1:].sum())
        if number in clock.started and number in clock.first_report:
            gap = clock.first_report[number] - clock.started[number]
            launch[number] = gap - float(first["time_this_iter_s"])
    first_number = min(launch, default=0)
    timings = outcome.timings
    breakdown = {
        "ray start": ray_start,
        "first trial's worker start (imports torch, timm, Ray Tune)": launch.get(first_number, 0.0),
        "later trials' start (reused worker)": sum(
            v for k, v in launch.items() if k != first_number
        ),
        "trial set-up (model, data, first report)": setup,
        "per-epoch checkpoint + report": per_epoch,
        "database (bridge)": timings.get("database", 0.0),
        "test evaluation + publish": timings.get("publish", 0.0),
    }
    breakdown["Tune scheduling, other"] = wall - steps - sum(breakdown.values())
    return wall, steps, breakdown


@dataclass(frozen=True)
class FreezeThawOverhead:
    """What freeze-thaw costs a real job beyond training: its decisions, and the wall time a
    pause and a resume take (one trial at a time, so a pause frees the only slot)."""

    trials: int
    wall: float
    decisions: float  # seconds in should_pause/choose/give_up/evict, the study read included
    calls: int
    pauses: list[float]  # a pause's decision -> the next trial (new or resumed) on the slot
    resumes: list[float]  # a resume's decision -> its next epoch reported, less that epoch's steps

    @property
    def per_trial(self) -> float:
        return self.decisions / self.trials


class _Events:
    """Every bridge event with its time."""

    def __init__(self) -> None:
        self.heard: list[tuple[float, str, int, int | None]] = []

    def on_event(
        self, kind: str, number: int, value: float | None = None, epoch: int | None = None,
        note: str | None = None,
    ) -> None:
        self.heard.append((time.perf_counter(), kind, number, epoch))


def freeze_thaw(trials: int = 6, epochs: int = 4, img_size: int = 32,
                backbone: str = "test_resnet.r160_in1k") -> FreezeThawOverhead:
    """A `pruner: freeze-thaw` job on the digits, one trial at a time, whose learning rate is
    good or hopeless (so trials pause, and promotion-type ASHA's rule resumes some for sure:
    `learned: false`, rungs at 1, 2 epochs)."""
    from ray.tune import ExperimentAnalysis

    space = {**fixed_space(backbone, img_size), "lr": [0.003, 1e-7]}
    spec = _one_at_a_time(
        "overhead-ft", space, trials, epochs,
        {"pruner": "freeze-thaw",
         "pruner_options": {"min_resource": 1, "reduction_factor": 2, "learned": False}},
        evaluation={"corruptions": False})
    with tempfile.TemporaryDirectory(prefix="bench-overhead-ft-") as tmp:
        settings = Settings(home=Path(tmp))
        events = _Events()
        ensure_ray(None)
        started = time.perf_counter()
        outcome = run_job(spec, "overhead-ft", settings, events=events)
        wall = time.perf_counter() - started
        assert outcome.state == "succeeded", outcome.error
        steps: dict[tuple[int, int], float] = {}  # (trial number, epoch) -> its train+eval steps
        for frame in ExperimentAnalysis(str(settings.runs_path / "overhead-ft")
                                        ).trial_dataframes.values():
            number = _number_of(settings, str(frame["trial_id"].iloc[0]))
            for _, row in frame.dropna(subset=["epoch"]).iterrows():
                steps[(number, int(row["epoch"]))] = float(row["epoch_seconds"])
    heard = events.heard
    pauses, resumes = [], []
    for i, (at, kind, number, _) in enumerate(heard):
        if kind == "paused":
            nxt = next((t for t, k, _, _ in heard[i + 1:] if k in ("start", "running")), None)
            if nxt is not None:
                pauses.append(nxt - at)
        elif kind == "running":
            report = next(((t, e) for t, k, n, e in heard[i + 1:] if k == "report" and n == number),
                          None)
            if report is not None and report[1] is not None:
                resumes.append(report[0] - at - steps.get((number, report[1]), 0.0))
    timings = outcome.timings
    return FreezeThawOverhead(trials, wall, timings.get("freeze-thaw decisions", 0.0),
                              int(timings.get("freeze-thaw calls", 0)), pauses, resumes)


def _number_of(settings: Settings, ray_trial_id: str) -> int:
    import optuna

    from automl.search import keys
    from storage.optuna_storage import optuna_storage

    study = optuna.load_study(study_name="overhead-ft", storage=optuna_storage(settings.storage_url))
    return next(t.number for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(keys.RAY_TRIAL_ID) == ray_trial_id)
