"""How a job ends: its leftover trials finished, its best trial chosen and scored on the test
split, or the reason no trial could be (with the fix, when every trial shared one)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune

from automl.search import keys
from automl.search.keys import TrialCounts, state_name
from automl.search.spec import JobSpec
from automl.tune.bridge import Events, best_of
from automl.tune.stopper import FAIL_FAST_TRIALS, JobStopper
from storage.optuna_storage import retry
from workers.tune_adapter import can_evaluate_here, evaluate_on_split

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    job_id: str
    state: str  # succeeded, failed, cancelled
    counts: TrialCounts
    best_trial: int | None = None
    best_value: float | None = None
    test_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: ray_start, database, ...


def finish_leftovers(
    study: optuna.Study, maximize: bool, events: Events | None = None
) -> TrialCounts:
    """Trials still RUNNING after Tune returned were stopped by the budget, the target or a cancel:
    those with results are told COMPLETE with their best epoch, the others FAIL. Returns the
    final counts."""
    running = retry(
        lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), what="list trials"
    )
    for frozen in running:
        value = best_of(frozen.intermediate_values, maximize)
        state = TrialState.FAIL if value is None else TrialState.COMPLETE

        def tell(number: int = frozen.number, state: TrialState = state,
                 value: float | None = value) -> None:
            study.tell(number, value, state=state, skip_if_finished=True)

        retry(tell, what="finish a trial")
        if events is not None:
            events.on_event(state_name(state), frozen.number, value)
    return retry(lambda: TrialCounts.of(t.state for t in study.get_trials(deepcopy=False)),
                 what="count trials")


def best_with_checkpoint(
    study: optuna.Study, results: list[tune.Result], maximize: bool
) -> tuple[optuna.trial.FrozenTrial | None, tune.Result | None]:
    """The best complete trial whose checkpoint this Tune run holds. Only a job whose Ray state
    was lost (its trials' checkpoints with it) can have a better trial without one."""
    by_ray_id = {(r.metrics or {}).get("trial_id"): r for r in results if r.best_checkpoints}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: float(t.value or 0.0), reverse=maximize):
        result = by_ray_id.get(trial.user_attrs.get(keys.RAY_TRIAL_ID))
        if result is not None:
            if trial.number != study.best_trial.number:
                log.warning("trial %d scored best, but its checkpoint went with Ray's state: "
                            "publishing trial %d", study.best_trial.number, trial.number)
            return trial, result
    return None, None


def score_on_test(checkpoint: tune.Checkpoint, spec: JobSpec) -> dict[str, Any]:
    """In the driver when it can (no cold worker to start), else on a node with the trial's GPU."""
    if can_evaluate_here(spec.resources.gpu):
        return evaluate_on_split(checkpoint, "test")
    evaluate = ray.remote(evaluate_on_split).options(
        num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu
    )
    return ray.get(evaluate.remote(checkpoint, "test"))


def why_nothing_completed(
    spec: JobSpec, job_id: str, study: optuna.Study, results: list[tune.Result]
) -> str:
    """The job's error when no trial completed: the first distinct errors, why the job stopped,
    and the fix when every trial met the same known fault."""
    errors = list(dict.fromkeys(str(r.error).strip().splitlines()[-1]
                                for r in results if r.error))[:3]
    detail = f"; first errors: {' | '.join(errors)}" if errors else ""
    if JobStopper.gave_up(job_id):
        detail = (f"; stopped after the first {FAIL_FAST_TRIALS} trials failed before an "
                  f"epoch{detail}")
    elif _time_is_up(spec, study):
        detail = (f"; the time limit ({spec.budget.time_limit:g} s) ran out before any trial "
                  f"finished an epoch: raise budget.time_limit{detail}")
    return f"no trial completed{detail}{failure_hint(errors)}"


def _time_is_up(spec: JobSpec, study: optuna.Study) -> bool:
    limit = spec.budget.time_limit
    started = study.user_attrs.get(keys.STARTED_AT)
    return limit is not None and started is not None and time.time() >= float(started) + limit


def failure_hint(errors: list[str]) -> str:
    """The fix for the failures that every trial of a job can share."""
    if any("huggingface" in e.lower() or "hf_hub" in e.lower() for e in errors):
        return ("; the workers could not fetch pretrained weights: give them network access or "
                "a filled Hugging Face cache (HF_HOME), or set space.pretrained: false")
    if any("out of memory" in e.lower() for e in errors):
        return ("; the trials ran out of GPU memory: narrow space.batch_size or space.img_size, "
                "or give each trial more of a GPU (resources.gpu)")
    return ""
