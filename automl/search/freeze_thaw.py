"""Freeze-thaw search: a weak trial is paused with its checkpoint instead of being killed, and
at every free slot the search either resumes a paused trial or starts a new configuration.

`FreezeThaw` is the seam (Ray Tune's `TrialScheduler` style: a base class with documented
hooks), owned by the `Strategy`, so the replay benchmark and a real job ask the very same object.
Its hooks see only `Curve`s: a trial's configuration, the values it reported by epoch and the
seconds each epoch took. `PromotionAsha` is the anchor every learned decision is measured against
(promotion-type ASHA, Li et al. 2020: what successive halving would prune is paused, and
promoted later when the rung's cut moves below it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Curve:
    """What a decision sees of one trial."""

    number: int  # the Optuna trial's number
    params: dict[str, Any]  # its configuration
    values: dict[int, float]  # epoch (1-based) -> the objective's value that epoch
    seconds: dict[int, float] = field(default_factory=dict)  # epoch -> its seconds, if known
    state: str = "running"  # running, paused, complete, pruned

    @property
    def epochs(self) -> int:
        return max(self.values, default=0)

    def best(self, maximize: bool = True) -> float | None:
        if not self.values:
            return None
        return max(self.values.values()) if maximize else min(self.values.values())


class FreezeThaw:
    """The decisions of a freeze-thaw search. Hooks, called by the driver (a real job's bridge)
    or the replay benchmark's simulated cluster, never concurrently:

    - `should_pause(curve, curves)`: after every epoch a running trial reports (not its last
      one): pause it now (its checkpoint kept), True, or let it train on, False. `curves`: every
      trial of the search so far, `curve` among them.
    - `choose(paused, curves)`: a slot is free: the number of the paused trial to resume (it
      continues from its checkpoint, its curve from its last epoch), or None to start a new
      configuration. `paused` is never empty when it is called.
    - `give_up(curves)`: the budget is spent: the paused trials to end as pruned (default:
      all of them).
    - `evict(paused, concurrent)`: after a pause, the paused trial to give up (pruned, its
      checkpoint removed) when more than `max_paused(concurrent)` are paused, else None.
    """

    def __init__(self, max_epochs: int, maximize: bool = True) -> None:
        self.max_epochs = max_epochs
        self.maximize = maximize

    def should_pause(self, curve: Curve, curves: Sequence[Curve]) -> bool:
        raise NotImplementedError

    def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
        raise NotImplementedError

    def give_up(self, curves: Sequence[Curve]) -> list[int]:
        return [c.number for c in curves if c.state == "paused"]

    @staticmethod
    def max_paused(concurrent: int) -> int:
        """How many paused trials keep their checkpoint. Promotion happens near the rung's cut:
        a paused trial far below it is resumed only if many later trials score worse, which the
        budget seldom allows. Twice the trials running at once (at least 4) is room for the
        ones a few new results can promote, and bounds the disk: at most this many +
        `concurrent` latest checkpoints, however many trials the job runs."""
        return max(4, 2 * concurrent)

    def evict(self, paused: Sequence[Curve], concurrent: int) -> int | None:
        """Beyond `max_paused`, the paused trial whose last value is the worst."""
        return self.worst(paused) if len(paused) > self.max_paused(concurrent) else None

    def worst(self, paused: Sequence[Curve]) -> int:
        sign = 1 if self.maximize else -1
        return min(paused, key=lambda c: sign * c.values[c.epochs] if c.values else -float("inf")
                   ).number


class PromotionAsha(FreezeThaw):
    """Promotion-type ASHA: rungs at `min_resource * reduction_factor**k` epochs; a trial
    reaching a rung outside the top 1/`reduction_factor` of every trial that reached it is
    paused; a paused trial that has since entered that top fraction (others below it arrived)
    is resumed before any new configuration starts, the best first."""

    def __init__(self, max_epochs: int, maximize: bool = True, min_resource: int = 2,
                 reduction_factor: int = 3) -> None:
        super().__init__(max_epochs, maximize)
        if min_resource < 1 or reduction_factor < 2:
            raise ValueError("min_resource must be >= 1 and reduction_factor >= 2")
        self.min_resource, self.reduction_factor = min_resource, reduction_factor

    def rungs(self) -> list[int]:
        out, rung = [], self.min_resource
        while rung < self.max_epochs:
            out.append(rung)
            rung *= self.reduction_factor
        return out

    def _cut(self, rung: int, curves: Sequence[Curve]) -> float:
        """The value at `rung` of the last trial in the top 1/reduction_factor (at least one)."""
        reached = [c.values[rung] for c in curves if rung in c.values]
        keep = max(1, len(reached) // self.reduction_factor)
        return sorted(reached, reverse=self.maximize)[keep - 1]

    def _promotable(self, curve: Curve, rung: int, curves: Sequence[Curve],
                    cuts: dict[int, float] | None = None) -> bool:
        """In the top 1/reduction_factor of the trials that reached `rung` (at least one).
        `cuts`: each rung's cut, computed once per `choose` (many paused trials share a rung)."""
        if cuts is None:
            cut = self._cut(rung, curves)
        elif rung in cuts:
            cut = cuts[rung]
        else:
            cut = cuts[rung] = self._cut(rung, curves)
        return curve.values[rung] >= cut if self.maximize else curve.values[rung] <= cut

    def should_pause(self, curve: Curve, curves: Sequence[Curve]) -> bool:
        rung = curve.epochs
        return rung in self.rungs() and not self._promotable(curve, rung, curves)

    def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
        cuts: dict[int, float] = {}
        ready = [c for c in paused if self._promotable(c, c.epochs, curves, cuts)]
        if not ready:
            return None
        best = (max if self.maximize else min)(ready, key=lambda c: c.values[c.epochs])
        return best.number
