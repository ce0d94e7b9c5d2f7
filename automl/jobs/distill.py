"""The distill stage: the search's best model teaches a student that fits the deployment target.

The student's trials are a job of their own, study `JOB-distill`: the same driver, bridge,
pruner, retention and fault handling as the search (`run_job`, which this module is handed, not
imports), with a space that fixes the teacher and the student and searches the distillation
settings and the learning rate. Each trial runs the teacher on every student batch (consistent
teaching, `workers.train.distill`). Its published model, republished with its int8 form and a
card that sets it beside the teacher and the student alone, is the job's deployable model
(`automl.jobs.deployable`). The student is chosen, and refused when it cannot fit, before
anything trains: named ones before the search, `auto` from the search's own trials.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl.errors import JobError
from automl.jobs.outcome import JobOutcome
from automl.jobs.pull import kept_checkpoint_of, pull, pull_checkpoint
from automl.search import keys
from automl.search.keys import count_trials
from automl.search.overrides import NOT_IN_SPACE
from automl.search.ranking import best_fitting
from automl.search.spec import JobSpec, parse_spec
from automl.settings import Settings
from storage.optuna_storage import optuna_storage, retry
from workers.config import TrialConfig
from workers.model.costs import measure_costs, static_costs
from workers.model.target import COSTS_REQUEST, broken_limits

SUFFIX = "-distill"
# searched for every student unless the job's space fixes them: the soft targets' temperature
# and their weight against the labels (Hinton et al. 2015; Beyer et al. 2022 use T in 1..10)
DISTILL_SPACE = {"distill_temperature": {"low": 1.0, "high": 8.0},
                 "distill_alpha": {"low": 0.3, "high": 1.0}}
LR_SPREAD = 3.0  # a fitting trial's lr, searched within this factor either way
# a fitting trial's settings the student does not inherit: the distillation's own, the search's
# fixed ones, and those that depend on the number of epochs (the stage has its own)
NOT_INHERITED = {"backbone", "img_size", "lr", "teacher", "distill_temperature", "distill_alpha",
                 "warmup_epochs", "warmup_lr", "decay_epochs", "milestones", "cycle_epochs",
                 *NOT_IN_SPACE}


def stage_id(job_id: str) -> str:
    """The distill stage's study (and Ray experiment) name."""
    return job_id + SUFFIX


@dataclass(frozen=True)
class Student:
    backbones: tuple[str, ...]
    img_size: int | None
    recipe: dict[str, Any]  # settings inherited from the student alone; {} for a named student
    alone: FrozenTrial | None  # the search's best trial that fits: the student trained alone


def check_students(spec: JobSpec, n_classes: int) -> None:
    """Before the search: every named student fits the stage's limits, and for `auto` at least
    the space's cheapest backbone does (else no student could). Latency is measured here, on
    the job's target."""
    assert spec.distill is not None
    limits = spec.distill_limits()
    if not limits:
        return
    size = spec.search_space().smallest_img_size()
    named = spec.distill.students
    if named is None:
        _refuse_over(spec, cheapest_backbone(spec, n_classes), size, n_classes, limits,
                     fix="raise the limit, add a smaller backbone to space.backbone, or name "
                     "a student")
        return
    for backbone in named:
        _refuse_over(spec, backbone, size, n_classes, limits,
                     fix="name a smaller student or raise the limit")


def cheapest_backbone(spec: JobSpec, n_classes: int) -> str:
    """The space's backbone with the fewest MACs among those whose parameters and MACs (counted,
    not run) meet the stage's limits; the fewest MACs of all when none does."""
    size = spec.search_space().smallest_img_size()
    static = {k: v for k, v in spec.distill_limits().items() if k in ("params_m", "macs_g")}
    counted = []
    for backbone in spec.search_space().backbones():
        params_m, macs_g, _ = static_costs(backbone, size, n_classes)
        counted.append((backbone, {"params_m": params_m, "macs_g": macs_g}))
    fitting = [c for c in counted if not broken_limits(c[1], static)] or counted
    return min(fitting, key=lambda c: c[1]["macs_g"])[0]


def _refuse_over(spec: JobSpec, backbone: str, size: int | None, n_classes: int,
                 limits: dict[str, float], fix: str) -> None:
    target = spec.objective.latency.target() if "latency_ms" in limits else None
    costs = measure_costs(backbone, size, n_classes, target)
    broken = broken_limits(costs.to_dict(), limits)
    if broken:
        side = size or "its own"
        said = "; ".join(f"{name} {value:.3g} over distill.limits.{name} {limit:g}"
                         for name, (value, limit) in broken.items())
        where = f" on the target ({target.key()})" if target is not None else ""
        raise JobError(f"distill.student: {backbone} at {side} px does not fit: {said}{where}; "
                       f"{fix}")


def choose_student(spec: JobSpec, study: optuna.Study, n_classes: int) -> Student:
    """The named students, or (`auto`) the search's best trial that fits the limits, its
    settings inherited, or when none fits the space's cheapest backbone."""
    assert spec.distill is not None
    space = spec.search_space()
    size = space.smallest_img_size()
    named = spec.distill.students
    complete = retry(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                     what="list trials")
    alone = best_fitting(complete, spec.distill_limits(), spec.objective.maximize)
    if named is not None:
        if alone is not None and alone.user_attrs.get(keys.CONFIG, {}).get("backbone") not in named:
            alone = None  # a student alone is the same backbone, or there is none to compare
        return Student(named, size, {}, alone)
    if alone is None:
        return Student((cheapest_backbone(spec, n_classes),), size, {}, None)
    config = alone.user_attrs.get(keys.CONFIG, {})
    fields = {f.name for f in dataclasses.fields(TrialConfig)}
    recipe = {k: v for k, v in config.items()
              if k in fields and k not in NOT_INHERITED and k != COSTS_REQUEST}
    recipe["lr"] = config.get("lr")
    return Student((config["backbone"],), config.get("img_size"), recipe, alone)


def stage_spec(spec: JobSpec, student: Student, teacher: Path) -> JobSpec:
    """The student trials' job: the search's data, target and strategy; the student, its
    inherited settings and the teacher fixed; the distillation and the lr searched."""
    assert spec.distill is not None
    d = spec.distill
    space: dict[str, Any] = dict(spec.space)
    for name, value in student.recipe.items():
        if name != "lr":
            space[name] = {"value": value}
    lr = student.recipe.get("lr")
    if isinstance(lr, int | float) and lr > 0:
        space["lr"] = {"low": lr / LR_SPREAD, "high": lr * LR_SPREAD, "log": True}
    space["backbone"] = {"choices": list(student.backbones)}
    if student.img_size is not None:
        space["img_size"] = {"value": student.img_size}
    space["teacher"] = {"value": str(teacher)}
    for name, searched in DISTILL_SPACE.items():
        space.setdefault(name, searched)
    payload = spec.model_dump(mode="json", exclude={"distill", "name", "budget", "objective"})
    payload.update(
        name=f"{spec.name[:41 - len(SUFFIX)]}{SUFFIX}",
        budget={"n_trials": d.trials, "max_epochs": d.epochs or spec.budget.max_epochs},
        objective={"metric": spec.objective.metric, "limits": spec.distill_limits(),
                   "latency": spec.objective.latency.model_dump()},
        strategy={**payload["strategy"], "warm_start": False},
        space=space,
    )
    return parse_spec(payload, "the distill stage")


def stage_teacher(spec: JobSpec, job_id: str, settings: Settings, study: optuna.Study,
                  dataset: str) -> Path:
    """The teacher as a model folder where every worker reads the job's checkpoints (beside its
    runs): the published best, or `distill.teacher_trial`'s kept checkpoint."""
    assert spec.distill is not None
    folder = settings.runs_path / f"{job_id}-teacher"
    number = spec.distill.teacher_trial
    if number is None:
        storage = optuna_storage(settings.storage_url)
        return pull(storage, settings.artifacts_path, job_id, folder)
    trials = retry(lambda: study.get_trials(deepcopy=False), what="list trials")
    frozen = next((t for t in trials if t.number == number), None)
    kept = None
    if frozen is not None and frozen.state == TrialState.COMPLETE:
        kept = kept_checkpoint_of(settings.runs_path / job_id,
                                  str(frozen.user_attrs.get(keys.RAY_TRIAL_ID)))
    if frozen is None or kept is None:
        kept_ones = sorted(_kept_numbers(trials, settings.runs_path / job_id))
        raise JobError(
            f"distill.teacher_trial: trial {number} of job {job_id} has no kept checkpoint "
            f"(trials with one: {', '.join(map(str, kept_ones)) or 'none'}); name one of them, "
            "leave teacher_trial out for the published best, or raise checkpoints.keep_trials")
    counts = count_trials(trials)
    return pull_checkpoint(kept, folder, job_id, frozen, spec.objective.metric, None, counts,
                           dataset)


def _kept_numbers(trials: list[FrozenTrial], run_folder: Path) -> list[int]:
    return [t.number for t in trials if t.state == TrialState.COMPLETE
            and kept_checkpoint_of(run_folder, str(t.user_attrs.get(keys.RAY_TRIAL_ID)))]


RunJob = Callable[..., JobOutcome]


def run_stage(spec: JobSpec, job_id: str, settings: Settings, study: optuna.Study,
              n_classes: int, dataset_name: str, run: RunJob, **run_options: Any) -> tuple[
                  JobOutcome, Student]:
    """Choose the student, stage the teacher, run the student trials (`run`: the driver's
    `run_job`, with `run_options`). The teacher's copy goes once the stage has ended; an
    interrupted stage's stays for its resume, which pulls it again."""
    student = choose_student(spec, study, n_classes)
    teacher = stage_teacher(spec, job_id, settings, study, dataset_name)
    outcome = run(stage_spec(spec, student, teacher.resolve()), stage_id(job_id), settings,
                  stage_of=job_id, **run_options)
    if outcome.state != "cancelled":
        shutil.rmtree(teacher, ignore_errors=True)
    return outcome, student
