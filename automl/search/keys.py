"""The vocabulary a job's study carries: its attribute keys, and its trials counted by state.

Written once here, read by the bridge that writes them, the driver, the publisher, the service
and optuna-dashboard users (the keys show in its trial and study pages).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from optuna.trial import TrialState

# study user attributes
SPEC = "spec"  # the job spec the study was created for
STARTED_AT = "started_at"  # wall-clock start of the job: the time limit counts from it
BEST_TRIAL = "best_trial"  # number of the published trial, once published
TEST_METRICS = "test_metrics"  # its scores on the test split

# trial user attributes
RAY_TRIAL_ID = "ray_trial_id"  # the Ray Tune trial running it
CONFIG = "config"  # the whole trial configuration the engine ran (params + fixed settings)
ORPHANED = "orphaned"  # asked after Ray last saved its state: the next suggestion adopts it
DRIVER_MS = "driver_ms"  # the driver's time on it: ask, and each epoch's report + should_prune
COSTS = "costs"  # params_m, macs_g, latency_ms of its configuration, measured before it trained
OVER_LIMIT = "over_limit"  # the limits its costs broke (it never trained): {cost: [value, limit]}

# study user attributes, deployment-aware jobs
MEASURED_COSTS = "measured_costs"  # costs by "backbone@img_size@target", measured once a job
FRONT = "pareto_front"  # the front's members once the job ends: number, values, test scores


@dataclass(frozen=True)
class TrialCounts:
    """A study's trials by state: one spelling for every count a user sees."""

    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    waiting: int = 0

    @classmethod
    def of(cls, states: Iterable[TrialState]) -> TrialCounts:
        tally = dict.fromkeys(("running", "complete", "pruned", "failed", "waiting"), 0)
        for state in states:
            tally[_NAMES[state]] += 1
        return cls(**tally)

    @property
    def finished(self) -> int:
        """What counts toward the budget: every trial that ended, whatever its end."""
        return self.complete + self.pruned + self.failed


_NAMES = {TrialState.RUNNING: "running", TrialState.COMPLETE: "complete",
          TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}


def state_name(state: TrialState) -> str:
    """How a trial's state is spelled to users: the TrialCounts field it counts toward."""
    return _NAMES[state]
