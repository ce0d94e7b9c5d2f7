"""Checkpoint retention: a job's run storage holds what something will read, and nothing else.

Ray Tune keeps each trial's best and latest checkpoint, each a model plus its optimizer state
(Adam's is twice the weights), forever: with a large backbone, a job's storage would grow by
gigabytes with every trial. Here, as Determined's checkpoint GC and Ray's `num_to_keep` give their
users, when a trial ends:

- pruned or failed, it never resumes: every checkpoint of it goes;
- complete, it keeps only the checkpoint of its best epoch, without the optimizer state, and
  only while it is among the `keep_trials` best complete trials of the job (or is one the
  job still needs, such as a Pareto-front member): the others' go.

A running trial is never touched (its resume needs its latest checkpoint). The published best
is the job's best complete trial, so it is always kept. The same pass runs when Tune returns,
for the trials the budget, a cancel or a time limit ended, and for anything a killed driver
left behind.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial as RayTrial

from automl.search import keys
from automl.search.ranking import best_fitting, best_value, ranked_complete
from automl.tune.bridge import StudyLink

log = logging.getLogger(__name__)
OPTIMIZER_FILES = ("optimizer.safetensors", "trainer.json")  # what only a resume reads


class Retention(tune.Callback):
    """Applies the rules above as Ray Tune reports each trial's end."""

    def __init__(
        self,
        link: StudyLink,
        keep_trials: int,
        objective: str,
        maximize: bool,
        also_keep: Callable[[optuna.Study], set[int]] | None = None,
    ) -> None:
        """`also_keep`: the trials some other feature still needs (picklable: Ray saves its
        callbacks with the experiment, as it does the link)."""
        self.link, self.keep_trials = link, keep_trials
        self.objective, self.maximize = objective, maximize
        self.also_keep = also_keep

    def on_trial_complete(self, iteration: int, trials: list[RayTrial], trial: RayTrial,
                          **info: Any) -> None:
        self.apply(_folders(trials))

    def on_trial_error(self, iteration: int, trials: list[RayTrial], trial: RayTrial,
                       **info: Any) -> None:
        self.apply(_folders(trials))

    def apply(self, folders: dict[str, Path]) -> None:
        """`folders`: each Ray trial's folder by its Ray trial id."""
        study = self.link.study
        keep = self.link.call(lambda: self.keepers(study), "rank the complete trials")
        for frozen in study.get_trials(deepcopy=False):
            folder = folders.get(str(frozen.user_attrs.get(keys.RAY_TRIAL_ID)))
            if folder is None or not frozen.state.is_finished():
                continue
            if frozen.state == TrialState.COMPLETE and frozen.number in keep:
                keep_best_only(folder, self.objective, self.maximize)
            else:
                remove_checkpoints(folder)

    def keepers(self, study: optuna.Study) -> set[int]:
        """Numbers of the trials whose checkpoint is kept."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ranked = ranked_complete(complete, self.maximize)
        keep = {t.number for t in ranked[: self.keep_trials]}
        if self.also_keep is not None:
            keep |= self.also_keep(study)
        return keep


def _folders(trials: list[RayTrial]) -> dict[str, Path]:
    """Each Ray trial's folder. A trial asked but never scheduled (one a cancel stopped while
    it waited) has none: Ray raises on its `path`."""
    folders: dict[str, Path] = {}
    for trial in trials:
        path = trial.path if trial.relative_logdir else None
        if path is not None:
            folders[trial.trial_id] = Path(path)
    return folders


def checkpoint_folders(trial_folder: Path) -> list[Path]:
    return sorted(trial_folder.glob("checkpoint_*"))


def remove_checkpoints(trial_folder: Path) -> None:
    for checkpoint in checkpoint_folders(trial_folder):
        shutil.rmtree(checkpoint, ignore_errors=True)


def keep_best_only(trial_folder: Path, objective: str, maximize: bool) -> Path | None:
    """The trial's best-scoring checkpoint (the latest of equals), without its optimizer state;
    its other checkpoints go."""
    scored = [(score, folder) for folder in checkpoint_folders(trial_folder)
              if (score := _score(folder, objective)) is not None]
    if not scored:
        return None
    top = best_value((score for score, _ in scored), maximize)
    best = max(folder for score, folder in scored if score == top)
    for _, folder in scored:
        if folder != best:
            shutil.rmtree(folder, ignore_errors=True)
    for name in OPTIMIZER_FILES:
        (best / name).unlink(missing_ok=True)
    return best


def _score(folder: Path, objective: str) -> float | None:
    try:
        value = json.loads((folder / "metrics.json").read_text()).get(objective)
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def kept_checkpoint_folder(named: Path) -> Path | None:
    """The checkpoint Ray names for a trial, or the one retention kept in its place."""
    if named.exists():
        return named
    left = checkpoint_folders(named.parent)
    return left[-1] if left else None


def folders_of(results: Iterable[tune.Result]) -> dict[str, Path]:
    return {str((r.metrics or {}).get("trial_id")): Path(r.path) for r in results if r.path}


def front_members(study: optuna.Study) -> set[int]:
    """A Pareto-front job's front (Optuna's best trials: non-dominated, feasible first)."""
    return {t.number for t in study.best_trials}


@dataclass(frozen=True)
class Keepers:
    """What a job keeps beside its best `keep_trials`: its Pareto front, and for a distill stage
    the best trial that fits the student's limits (the student alone it is compared with).
    A dataclass, not a closure: Ray pickles the callback that holds it."""

    front: bool = False
    student_limits: tuple[tuple[str, float], ...] = ()
    maximize: bool = True

    def __call__(self, study: optuna.Study) -> set[int]:
        keep = front_members(study) if self.front else set()
        if self.student_limits:
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            alone = best_fitting(complete, dict(self.student_limits), self.maximize)
            if alone is not None:
                keep.add(alone.number)
        return keep
