"""A study's trials counted by state: the one type for every count a user sees, spelled the same
in a job's row, its outcome, its model card and the API (`failed` for Optuna's FAIL).

In storage, since the job row stores these counts and storage imports nothing of the control
plane; the control plane counts its studies with it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from optuna.trial import TrialState


@dataclass(frozen=True)
class TrialCounts:
    running: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    waiting: int = 0
    # freeze-thaw: RUNNING in Optuna, its checkpoint kept, not training (not among `running`)
    paused: int = 0

    @classmethod
    def of(cls, states: Iterable[TrialState | str]) -> TrialCounts:
        """From Optuna states, or names (`state_name`, and `paused`)."""
        tally = dict.fromkeys(("running", "complete", "pruned", "failed", "waiting", "paused"), 0)
        for state in states:
            tally[state if isinstance(state, str) else _NAMES[state]] += 1
        return cls(**tally)

    @property
    def finished(self) -> int:
        """What counts toward the budget: every trial that ended, whatever its end."""
        return self.complete + self.pruned + self.failed


PAUSED_STATE = "paused"
_NAMES = {TrialState.RUNNING: "running", TrialState.COMPLETE: "complete",
          TrialState.PRUNED: "pruned", TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}


def state_name(state: TrialState) -> str:
    """How a trial's state is spelled to users: the TrialCounts field it counts toward."""
    return _NAMES[state]
