"""A learned freeze-thaw decision, and Hyperband with pausing as a second anchor.

`CurveModel`: from a trial's partial learning curve (its values so far, fractions in [0, 1]),
the best value its whole run will reach (a Gaussian: mean and spread) and how many more epochs
it will run. One ridge regression per epoch bucket over (value at the epoch, its slope, best so
far), fitted on recorded fine-tuning curves (the replay benchmark's, other datasets only when a
dataset is scored). Shipped as data (`curve_model.json` beside this file, written by
`automl-bench curve-model`), so the product never imports the benchmark that fitted it.

`LearnedFreezeThaw`: pauses what promotion-type ASHA pauses (its rungs), and at a free slot
resumes the paused trial with the highest expected improvement over the incumbent per second of
its expected remaining compute, if that beats a new configuration's (the expected improvement of
the search's own population of curves so far, per second of a whole run).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from automl.search.freeze_thaw import Curve, FreezeThaw, PromotionAsha

DATA = Path(__file__).with_name("curve_model.json")
BUCKETS = (1, 2, 3, 4, 6, 9, 14, 20, 30)  # bucket k: epochs B_k .. B_{k+1} - 1 (the last: on)
RIDGE = 1e-3


def _features(values: Sequence[float]) -> list[float]:
    """Of a curve's values so far (epoch 1, 2, ...): 1, the last value, its slope, the best."""
    last = values[-1]
    slope = last - values[-2] if len(values) > 1 else 0.0
    return [1.0, last, slope, max(values)]


def _bucket(epoch: int) -> int:
    return max(k for k, b in enumerate(BUCKETS) if epoch >= b)


@dataclass(frozen=True)
class CurveModel:
    coef: tuple[tuple[float, ...], ...]  # per bucket: predicted best of the whole run - best so far
    sigma: tuple[float, ...]  # per bucket: the residuals' spread
    remaining: tuple[float, ...]  # per bucket: mean epochs a run that reached it goes on for
    length: float  # mean epochs of a whole run
    origin: str = ""

    def predict(self, values: Sequence[float]) -> tuple[float, float]:
        """Mean and spread of the best value the run that reported `values` will reach."""
        k = _bucket(len(values))
        gain = float(np.dot(self.coef[k], _features(values)))
        return max(values) + max(gain, 0.0), self.sigma[k]

    def epochs_left(self, epochs: int, max_epochs: int) -> float:
        left = self.length if epochs == 0 else self.remaining[_bucket(epochs)]
        return max(min(left, max_epochs - epochs), 0.0)

    def dumps(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def loads(cls, text: str) -> CurveModel:
        raw = json.loads(text)
        return cls(tuple(tuple(c) for c in raw["coef"]), tuple(raw["sigma"]),
                   tuple(raw["remaining"]), float(raw["length"]), raw.get("origin", ""))


def fit(curves: Sequence[Sequence[float]], origin: str = "") -> CurveModel:
    """Fit on recorded curves (each a run's values, fractions, epoch 1 first): every epoch of
    every run before its last is one example of its bucket (what continuing a run brings)."""
    rows: list[list[tuple[list[float], float, int]]] = [[] for _ in BUCKETS]
    for curve in curves:
        best = max(curve)
        for e in range(1, len(curve)):
            seen = curve[:e]
            rows[_bucket(e)].append((_features(seen), best - max(seen), len(curve) - e))
    coef: list[tuple[float, ...]] = []
    sigma: list[float] = []
    remaining: list[float] = []
    for k, examples in enumerate(rows):
        if len(examples) < 8:  # too few to fit: borrow the bucket before's
            coef.append(coef[-1] if k else (0.0, 0.0, 0.0, 0.0))
            sigma.append(sigma[-1] if k else 0.1)
            remaining.append(remaining[-1] if k else 0.0)
            continue
        x = np.array([f for f, _, _ in examples])
        y = np.array([t for _, t, _ in examples])
        w = np.linalg.solve(x.T @ x + RIDGE * len(x) * np.eye(x.shape[1]), x.T @ y)
        coef.append(tuple(float(v) for v in w))
        sigma.append(float(max(np.std(y - x @ w), 1e-3)))
        remaining.append(float(np.mean([r for _, _, r in examples])))
    length = float(np.mean([len(c) for c in curves])) if curves else 1.0
    return CurveModel(tuple(coef), tuple(sigma), tuple(remaining), length, origin)


def shipped() -> CurveModel:
    return CurveModel.loads(DATA.read_text())


def expected_improvement(mean: float, sigma: float, incumbent: float) -> float:
    z = (mean - incumbent) / sigma
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (mean - incumbent) * cdf + sigma * pdf


def _seconds_per_epoch(curve: Curve) -> float | None:
    return sum(curve.seconds.values()) / len(curve.seconds) if curve.seconds else None


def _typical_epoch(curves: Sequence[Curve]) -> float:
    """Mean seconds of an epoch over the curves that know theirs (1.0 if none does): what a
    curve without its own seconds (a job's trial from before a driver restart) is charged."""
    known = [s for c in curves if (s := _seconds_per_epoch(c)) is not None]
    return float(np.mean(known)) if known else 1.0


class LearnedFreezeThaw(PromotionAsha):
    """Pauses at promotion-type ASHA's rungs; resumes by expected improvement per second.
    Maximized objectives only (accuracy-like, in [0, 1]); minimized ones get PromotionAsha."""

    def __init__(self, max_epochs: int, maximize: bool = True, model: CurveModel | None = None,
                 min_resource: int = 2, reduction_factor: int = 3, early: bool = False) -> None:
        super().__init__(max_epochs, maximize, min_resource, reduction_factor)
        self.model = model or shipped()
        # also pause before the first rung when a new configuration is expected to bring more
        # per second (big datasets: an epoch there is 6-20 min, two of them before any rung)
        self.early = early
        self._predicted: dict[int, tuple[int, float, float]] = {}  # number -> epochs, mean, sigma

    def predict(self, curve: Curve) -> tuple[float, float]:
        known = self._predicted.get(curve.number)
        if known is None or known[0] != len(curve.values):
            mean, sigma = self.model.predict([curve.values[e] for e in sorted(curve.values)])
            known = self._predicted[curve.number] = (len(curve.values), mean, sigma)
        return known[1], known[2]

    def rate(self, curve: Curve, incumbent: float, typical: float = 1.0) -> float:
        """Expected improvement over `incumbent` per second of the rest of its run."""
        mean, sigma = self.predict(curve)
        seconds = (_seconds_per_epoch(curve) or typical) * max(
            self.model.epochs_left(curve.epochs, self.max_epochs), 1.0)
        return expected_improvement(mean, sigma, incumbent) / seconds

    def new_rate(self, curves: Sequence[Curve], incumbent: float) -> float:
        """A new configuration's: the mean expected improvement of the search's curves so far
        (each as predicted from all it reported), per mean second of a whole run."""
        seen = [c for c in curves if c.values]
        if not seen:
            return math.inf
        gains, seconds = [], []
        typical = _typical_epoch(seen)
        for c in seen:
            mean, sigma = self.predict(c)
            gains.append(expected_improvement(mean, sigma, incumbent))
            seconds.append(_seconds_per_epoch(c) or typical)
        whole = float(np.mean(seconds)) * max(self.model.epochs_left(0, self.max_epochs), 1.0)
        return float(np.mean(gains)) / whole

    def should_pause(self, curve: Curve, curves: Sequence[Curve]) -> bool:
        if super().should_pause(curve, curves):
            return True
        if not (self.early and self.maximize and curve.epochs < self.min_resource):
            return False
        incumbent = max((c.best() or 0.0) for c in curves)
        typical = _typical_epoch(curves)
        return self.rate(curve, incumbent, typical) < self.new_rate(curves, incumbent)

    def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
        if not self.maximize:
            return super().choose(paused, curves)
        incumbent = max((c.best() or 0.0) for c in curves)
        typical = _typical_epoch(curves)
        best = max(paused, key=lambda c: self.rate(c, incumbent, typical))
        better = self.rate(best, incumbent, typical) > self.new_rate(curves, incumbent)
        return best.number if better else None


class PausingHyperband(FreezeThaw):
    """Hyperband with pausing: brackets of promotion-type ASHA whose first rungs are
    min_resource * reduction_factor**s (s = 0, 1, ...); trial number n is in bracket
    n mod (number of brackets), and is ranked against its own bracket only."""

    def __init__(self, max_epochs: int, maximize: bool = True, min_resource: int = 1,
                 reduction_factor: int = 3) -> None:
        super().__init__(max_epochs, maximize)
        self.brackets: list[PromotionAsha] = []
        first = min_resource
        while first < max_epochs:
            self.brackets.append(PromotionAsha(max_epochs, maximize, first, reduction_factor))
            first *= reduction_factor

    def _of(self, curve: Curve, curves: Sequence[Curve]) -> tuple[PromotionAsha, list[Curve]]:
        n = len(self.brackets)
        return (self.brackets[curve.number % n],
                [c for c in curves if c.number % n == curve.number % n])

    def should_pause(self, curve: Curve, curves: Sequence[Curve]) -> bool:
        bracket, mine = self._of(curve, curves)
        return bracket.should_pause(curve, mine)

    def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
        ready = []
        for c in paused:
            bracket, mine = self._of(c, curves)
            if bracket.choose([c], mine) is not None:
                ready.append(c)
        if not ready:
            return None
        pick = (max if self.maximize else min)(ready, key=lambda c: c.values[c.epochs])
        return pick.number
