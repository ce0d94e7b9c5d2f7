"""The search strategy: sampler, pruner, space and warm start, as one object.

Ray Tune jobs (through the bridge) and the replay benchmark drive the very same object, so what
the benchmark measures is what jobs run. It knows nothing of Ray: it makes and loads the study,
and turns an Optuna trial into a trial configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from automl.space import SearchSpace

# Strong, broadly good fine-tuning configurations, tried first when warm start is on (a
# portfolio in the sense of auto-sklearn 2 / Quick-Tune). Each value is used only where the
# job's space can produce it; the rest of the configuration is sampled as usual.
PORTFOLIO: tuple[dict[str, Any], ...] = (
    {
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine",
        "warmup_epochs": 1, "freeze_stages": 0, "augment": "basic", "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0, "label_smoothing": 0.1, "drop_path_rate": 0.0, "batch_size": 64,
    },
)


@dataclass
class Strategy:
    space: SearchSpace
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int | None = None
    warm_start: bool = True
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner_options: dict[str, Any] = field(default_factory=dict)
    portfolio: tuple[dict[str, Any], ...] = PORTFOLIO

    @property
    def max_epochs(self) -> int:
        return self.space.max_epochs

    def make_sampler(self, offset: int = 0) -> BaseSampler:
        """`offset` reseeds a reloaded study so a restarted driver does not replay old draws."""
        seed = None if self.seed is None else self.seed + offset
        options = dict(self.sampler_options)
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if self.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, **options)
        if self.sampler == "cmaes":
            options.setdefault("warn_independent_sampling", False)
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        options.setdefault("multivariate", True)
        options.setdefault("group", True)
        options.setdefault("constant_liar", True)
        return optuna.samplers.TPESampler(seed=seed, **options)

    def make_pruner(self) -> BasePruner:
        options = dict(self.pruner_options)
        if self.pruner == "hyperband":
            options.setdefault("min_resource", 1)
            options.setdefault("max_resource", self.max_epochs)
            options.setdefault("reduction_factor", 3)
            return optuna.pruners.HyperbandPruner(**options)
        if self.pruner == "sha":
            options.setdefault("min_resource", 1)
            options.setdefault("reduction_factor", 3)
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if self.pruner == "median":
            options.setdefault("n_startup_trials", 4)
            options.setdefault("n_warmup_steps", 1)
            return optuna.pruners.MedianPruner(**options)
        return optuna.pruners.NopPruner()

    def create_study(
        self, storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any] | None = None
    ) -> optuna.Study:
        """Create the job's study, or load it when the job is being resumed."""
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                direction=self.direction,
                sampler=self.make_sampler(),
                pruner=self.make_pruner(),
            )
            for key, value in (attrs or {}).items():
                study.set_user_attr(key, value)
            if self.warm_start:
                for config in self.portfolio:
                    study.enqueue_trial(self._within_space(config), skip_if_exists=True)
            return study
        return self.load_study(storage, name, reseed=len(study.trials))

    def load_study(
        self, storage: optuna.storages.BaseStorage, name: str, reseed: int = 0
    ) -> optuna.Study:
        return optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=self.make_sampler(reseed),
            pruner=self.make_pruner(),
        )

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return self.space.sample(trial)

    def _within_space(self, config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if self.space.contains(k, v)}
