"""A sampler that does not draw again a backbone and image size already measured over a limit.

A configuration's costs depend on its backbone and image size only, and a job measures them
once (the study's `measured_costs`). Optuna's `constraints_func` teaches TPE from an over-limit
trial, but random sampling learns nothing, and NSGA-II and GP read complete trials only, which an
over-limit trial never is. So any sampler is wrapped: a backbone (or a backbone's image size)
whose measured costs broke a limit is drawn again, up to a few times, and then replaced by one
not known to break any, uniformly. Costs grow with the image side, so a size at or above one
known over a limit is taken as over it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from automl.search import keys

REDRAWS = 8  # the base sampler's own draws tried before a uniform pick among the rest


class FeasibleSampler(BaseSampler):
    """`base`, except that known over-limit backbones and image sizes are not drawn again."""

    def __init__(self, base: BaseSampler, limits: dict[str, float], seed: int | None = None,
                 smallest_img_size: int | None = None) -> None:
        self.base, self.limits = base, dict(limits)
        self.smallest_img_size = smallest_img_size
        self._rng = optuna.samplers.RandomSampler(seed=seed)

    def over(self, study: optuna.Study) -> dict[str, list[int | None]]:
        """{backbone: image sizes measured over a limit (None: the backbone's own)}."""
        out: dict[str, list[int | None]] = {}
        for key, costs in study.user_attrs.get(keys.MEASURED_COSTS, {}).items():
            backbone, side, _ = key.split("@", 2)
            if any(costs.get(name) is not None and costs[name] > limit
                   for name, limit in self.limits.items()):
                out.setdefault(backbone, []).append(None if side == "default" else int(side))
        return out

    def _bad(self, over: dict[str, list[int | None]], backbone: str, side: int | None) -> bool:
        sides = over.get(backbone, [])
        if None in sides and side is None:
            return True
        return side is not None and any(s is not None and s <= side for s in sides)

    def _bad_backbone(self, over: dict[str, list[int | None]], backbone: str) -> bool:
        return self._bad(over, backbone, self.smallest_img_size)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        params = dict(self.base.sample_relative(study, trial, search_space))
        if self.limits and "backbone" in params:
            over = self.over(study)
            if self._bad(over, params["backbone"], params.get("img_size")):
                params.pop("backbone")  # drawn again, on its own, by sample_independent
                params.pop("img_size", None)
        return params

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if not self.limits or param_name not in ("backbone", "img_size"):
            return value
        over = self.over(study)
        if not over:
            return value

        def bad(v: Any) -> bool:
            if param_name == "backbone":
                return self._bad_backbone(over, v)
            return self._bad(over, trial.params.get("backbone", ""), v)

        for _ in range(REDRAWS):
            if not bad(value):
                return value
            value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if bad(value) and isinstance(param_distribution, CategoricalDistribution):
            rest = [c for c in param_distribution.choices if not bad(c)]
            if rest:
                choice = CategoricalDistribution(rest)
                value = self._rng.sample_independent(study, trial, param_name, choice)
        return value

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.reseed_rng()
