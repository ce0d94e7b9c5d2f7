"""How a job ends: its leftover trials finished, its best trial chosen and scored on the test
split, or the reason no trial could be (with the fix, when every trial shared one)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune

from automl.jobs.incidents import in_the_log, kind, new_incident, user_message
from automl.search import keys
from automl.search._optuna import trial_id
from automl.search.keys import TrialCounts, count_trials, state_name
from automl.search.ranking import front_member, ranked_complete, sorted_front
from automl.search.spec import JobSpec
from automl.tune.bridge import Events, StudyLink
from automl.tune.control import control_of
from automl.tune.retention import kept_checkpoint_folder
from automl.tune.stopper import FAIL_FAST_TRIALS, JobStopper
from workers.data.index import DatasetIndex
from workers.errors import last_line
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
    deployable: dict[str, Any] | None = None  # a distill stage's comparison (keys.DEPLOYABLE)


def finish_leftovers(link: StudyLink, events: Events | None = None) -> TrialCounts:
    """Trials still RUNNING after Tune returned were stopped by the budget, the target, the time
    limit or a cancel: those with results are told COMPLETE with their best epoch, the others
    FAIL (as a cancelled job may never be resumed: it holds no running trial, and retention
    keeps of its trials what it keeps of any); paused ones (freeze-thaw) PRUNED, never
    COMPLETE. Returns the final counts."""
    study = link.study
    running = link.call(
        lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), "list trials"
    )
    cancelled = control_of(link.study_name).cancelled()
    for frozen in running:
        values = link.values_of(frozen)
        state = TrialState.FAIL if values is None else TrialState.COMPLETE
        if keys.is_paused(frozen.user_attrs, frozen.state):  # freeze-thaw gave it up: pruned
            state, values = TrialState.PRUNED, None
        if values is None and cancelled:
            link.uncount(trial_id(frozen), "a cancel stopped it before its first epoch")

        def tell(number: int = frozen.number, state: TrialState = state,
                 values: float | list[float] | None = values) -> None:
            study.tell(number, values, state=state, skip_if_finished=True)

        link.call(tell, "finish a trial")
        if events is not None:
            events.on_event(state_name(state), frozen.number,
                            values[0] if isinstance(values, list) else values)
    return link.call(lambda: count_trials(study.get_trials(deepcopy=False)),
                     "count trials")


def best_with_checkpoint(
    study: optuna.Study, results: list[tune.Result], maximize: bool
) -> tuple[optuna.trial.FrozenTrial | None, tune.Result | None]:
    """The best complete trial whose checkpoint this Tune run holds. Only a job whose Ray state
    was lost (its trials' checkpoints with it) can have a better trial without one."""
    by_ray_id = {(r.metrics or {}).get("trial_id"): r for r in results if r.best_checkpoints}
    ranked = ranked_complete(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), maximize)
    for trial in ranked:
        result = by_ray_id.get(trial.user_attrs.get(keys.RAY_TRIAL_ID))
        if result is not None:
            if trial.number != ranked[0].number:
                log.warning("trial %d scored best, but its checkpoint went with Ray's state: "
                            "publishing trial %d", ranked[0].number, trial.number)
            return trial, result
    return None, None


def kept_checkpoint(result: tune.Result, spec: JobSpec) -> tune.Checkpoint:
    """The trial's best checkpoint: the one Ray names, or (with equal scores) the one retention
    kept in its place."""
    named = result.get_best_checkpoint(spec.objective.metric, spec.objective.mode)
    assert named is not None
    folder = kept_checkpoint_folder(Path(named.path))
    assert folder is not None, f"trial {result.path} has no checkpoint left"
    return named if folder == Path(named.path) else tune.Checkpoint(str(folder))


def score_front(
    study: optuna.Study, results: list[tune.Result], spec: JobSpec, published: int,
    published_test: dict[str, Any], index: DatasetIndex | None = None,
) -> list[dict[str, Any]]:
    """Every member of a Pareto front scored once on the test split (the published one was
    already): what `automl pareto` shows and `automl pull --trial` pulls."""
    by_ray_id = {(r.metrics or {}).get("trial_id"): r for r in results if r.best_checkpoints}
    members = sorted_front(study.best_trials, spec.objective.maximize)
    front = []
    for trial in members:
        result = by_ray_id.get(trial.user_attrs.get(keys.RAY_TRIAL_ID))
        if trial.number == published:
            test = published_test
        elif result is not None:
            scored = score_on_test(kept_checkpoint(result, spec), spec, index)
            test = {k: v for k, v in scored.items() if isinstance(v, int | float)}
        else:  # its checkpoint went with a lost Ray state
            test = {}
        front.append(front_member(trial, test))
    return front


def score_on_test(
    checkpoint: tune.Checkpoint, spec: JobSpec, index: DatasetIndex | None = None
) -> dict[str, Any]:
    """In the driver when it can (no cold worker to start), else on a node with the trial's GPU;
    `index`: the job's dataset as its driver indexed it."""
    options = spec.evaluation.model_dump()
    if can_evaluate_here(spec.resources.gpu):
        return evaluate_on_split(checkpoint, "test", index, **options)
    evaluate = ray.remote(evaluate_on_split).options(
        num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu
    )
    return ray.get(evaluate.remote(checkpoint, "test", index, **options))


def why_nothing_completed(spec: JobSpec, job_id: str, results: list[tune.Result]) -> str:
    """The job's error when no trial completed: the first distinct errors, why the job stopped,
    and the fix when every trial met the same known fault. A trial's user error is quoted; any
    other is named by its type and an incident id, its traceback logged under that id."""
    failed = [r.error for r in results if r.error]
    incident = new_incident()
    shown: dict[str, None] = {}
    for text, error in {str(e): e for e in failed}.items():  # each distinct error once
        message = user_message(error)
        if message is None:
            log.error("job %s: internal error %s in a trial:\n%s", job_id, incident, text)
            message = f"internal error {incident}: {kind(error)}"
        shown[message] = None
    errors = list(shown)[:3]
    detail = f"; first errors: {' | '.join(errors)}" if errors else ""
    if JobStopper.gave_up(job_id):
        detail = (f"; stopped after the first {FAIL_FAST_TRIALS} trials failed before an "
                  f"epoch{detail}")
    elif control_of(job_id).clock.out_of_time():
        detail = (f"; the time limit ({spec.budget.time_limit:g} s) ran out before any trial "
                  f"finished an epoch: raise budget.time_limit{detail}")
    last_lines = [last_line(e) for e in failed if str(e).strip()]
    internal = f"; {in_the_log(job_id)}" if any(incident in e for e in errors) else ""
    return f"no trial completed{detail}{failure_hint(last_lines)}{internal}"


def failure_hint(errors: list[str]) -> str:
    """The fix for the failures that every trial of a job can share."""
    if any("huggingface" in e.lower() or "hf_hub" in e.lower() for e in errors):
        return ("; the workers could not fetch pretrained weights: give them network access or "
                "a filled Hugging Face cache (HF_HOME), or set space.pretrained: false")
    if any("out of memory" in e.lower() for e in errors):
        return ("; the trials ran out of GPU memory: narrow space.batch_size or space.img_size, "
                "or give each trial more of a GPU (resources.gpu)")
    return ""
