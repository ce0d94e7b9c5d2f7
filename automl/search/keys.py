"""The vocabulary a job's study carries: its attribute keys, and its trials counted by state
(`TrialCounts`, `state_name`: defined in storage, whose job rows store the counts and which
imports nothing of the control plane; the control plane takes them from here).

Written once here, read by the bridge that writes them, the driver, the publisher, the service
and optuna-dashboard users (the keys show in its trial and study pages).
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from storage.counts import PAUSED_STATE as PAUSED_STATE
from storage.counts import TrialCounts as TrialCounts
from storage.counts import state_name as state_name

# study user attributes
SPEC = "spec"  # the job spec the study was created for
STARTED_AT = "started_at"  # wall-clock time the job's first driver started it
RUN_SECONDS = "run_seconds"  # time the job has run under a driver, summed: what time_limit bounds
# why the job tried no warm-start portfolio though its spec asked for one (one line; unset when
# it did): the portfolio's knowledge does not apply (`automl.search.applicability`)
WARM_START_OFF = "warm_start_off"
BEST_TRIAL = "best_trial"  # number of the published trial, once published
TEST_METRICS = "test_metrics"  # its scores on the test split
# the files published with it, the only ones `automl pull` takes:
# {filename: {"artifact_id": ..., "size": bytes, "sha256": hex}}
PUBLISHED_FILES = "published_files"
# a distill stage's result, on the job's study and on the stage's (`automl.jobs.deployable`):
# the stage's study, its published trial, and the teacher / student alone / distilled / int8
# comparison; the stage's publication is the deployable model
DEPLOYABLE = "deployable"

# trial user attributes
RAY_TRIAL_ID = "ray_trial_id"  # the Ray Tune trial running it
CONFIG = "config"  # the whole trial configuration the engine ran (params + fixed settings)
ORPHANED = "orphaned"  # asked after Ray last saved its state: the next suggestion adopts it
# why a finished trial does not count against the budget (a resumed job runs another in its
# place): a cancel stopped it before it started, or before its first epoch; it left nothing
UNCOUNTED = "uncounted"
DRIVER_MS = "driver_ms"  # the driver's time on it: ask, and each epoch's report + should_prune
COSTS = "costs"  # params_m, macs_g, latency_ms of its configuration, measured before it trained
OVER_LIMIT = "over_limit"  # the limits its costs broke (it never trained): {cost: [value, limit]}
ERROR = "error"  # a failed trial's own error, its last line (it was not retried)
# freeze-thaw (`strategy.pruner: freeze-thaw`): the epoch a trial was paused after, its checkpoint
# kept; None once it was resumed (Optuna cannot remove an attribute). A paused trial stays
# RUNNING in Optuna (its curve continues when it resumes): users and counts spell it `paused`
PAUSED = "paused"

# study user attributes, deployment-aware jobs
MEASURED_COSTS = "measured_costs"  # costs by "backbone@img_size@target", measured once a job
FRONT = "pareto_front"  # the front's members once the job ends: number, values, test scores

# trial system attributes, deployment-aware jobs
RUNG_KEY = "pareto_rung_{}"  # the trial's metric when it reached rung k (`.format(k)`)


def is_paused(user_attrs: dict[str, Any], state: TrialState) -> bool:
    """A RUNNING trial that freeze-thaw paused and has not resumed."""
    return state == TrialState.RUNNING and user_attrs.get(PAUSED) is not None


def trial_state(trial: Any) -> str:
    """How a trial's state is spelled to users (`state_name`), a paused one's `paused`."""
    if is_paused(trial.user_attrs, trial.state):
        return PAUSED_STATE
    return state_name(trial.state)


def count_trials(trials: Any) -> TrialCounts:
    """A study's trials counted by state, the paused ones apart from the running ones."""
    return TrialCounts.of(trial_state(t) for t in trials)
