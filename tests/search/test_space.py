"""The define-by-run space: conditional, never left once narrowed, warm started within it."""

from __future__ import annotations

from typing import Any

import optuna

from automl.jobs.driver import strategy_for
from automl.search.space import DEFAULT_BACKBONES
from automl.search.spec import parse_spec
from automl.search.strategy import portfolio_for
from tests.support import MINIMAL_JOB
from workers.config import TrialConfig


def sample_configs(
    spec_changes: dict[str, Any], n: int, n_images: int = 2000
) -> list[dict[str, Any]]:
    spec = parse_spec({**MINIMAL_JOB, **spec_changes})
    strategy = strategy_for(spec, n_images)
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "s")
    configs = []
    for _ in range(n):
        trial = strategy.ask(study)
        configs.append(strategy.space.sample(trial))
        study.tell(trial, 0.5)
    return configs


def test_default_space_is_conditional_and_runnable() -> None:
    configs = sample_configs({"strategy": {"seed": 3}}, 60)
    for config in configs:
        TrialConfig.from_dict(config)  # every sample is a config the engine accepts
        assert config["backbone"] in DEFAULT_BACKBONES
        assert ("momentum" in config) == (config["optimizer"] == "sgd")
        assert ("ra_magnitude" in config) == (config["augment"] == "randaugment")
        assert ("cycle_epochs" in config) == (config["schedule"] == "cyclic")
    assert len({c["schedule"] for c in configs}) >= 5
    assert len({c["augment"] for c in configs}) >= 4


def test_narrowed_space_is_never_left() -> None:
    space = {
        "backbone": ["resnet18", "convnext_atto"],
        "optimizer": "sgd",
        "lr": {"low": 0.01, "high": 0.05, "log": True},
        "momentum": {"low": 0.85, "high": 0.9},
        "schedule": ["cosine", "step"],
        "augment": "randaugment",
        "ra_magnitude": {"low": 3, "high": 5},
        "batch_size": [32],
        "img_size": 64,
        "layer_decay": [0.7, 0.9],
    }
    for warm in (True, False):
        for config in sample_configs({"space": space, "strategy": {"warm_start": warm}}, 40):
            assert config["backbone"] in ("resnet18", "convnext_atto")
            assert config["optimizer"] == "sgd"
            assert 0.01 <= config["lr"] <= 0.05
            assert 0.85 <= config["momentum"] <= 0.9
            assert config["schedule"] in ("cosine", "step")
            assert config["augment"] == "randaugment" and 3 <= config["ra_magnitude"] <= 5
            assert config["batch_size"] == 32 and config["img_size"] == 64
            assert config["layer_decay"] in (0.7, 0.9)


def test_warm_start_tries_the_portfolio_first() -> None:
    PORTFOLIO = portfolio_for(2000)
    first, second = sample_configs({"budget": {"max_epochs": 50}, "strategy": {"warm_start": True}}, 2)
    assert {k: first[k] for k in PORTFOLIO[0]} == PORTFOLIO[0]
    assert {k: second[k] for k in PORTFOLIO[1]} == PORTFOLIO[1]


def test_a_big_dataset_starts_from_a_cheaper_portfolio() -> None:
    """What pays off in the first hours differs with the dataset's size: a job on 80,000 images
    starts with a small backbone where one on 1,000 starts with a bigger one."""
    small, big = (sample_configs({"budget": {"max_epochs": 50}, "strategy": {"warm_start": True}},
                                 1, n_images)[0] for n_images in (1_000, 80_000))
    assert small["backbone"] == portfolio_for(1_000)[0]["backbone"]
    assert big["backbone"] == portfolio_for(64_000)[0]["backbone"]
    assert big["backbone"].startswith("edgenext") and not small["backbone"].startswith("edgenext")


def test_warm_start_keeps_only_what_the_job_can_run() -> None:
    """A portfolio value outside the job's space (or its epoch budget) is sampled instead."""
    PORTFOLIO = portfolio_for(2000)
    assert PORTFOLIO[0]["warmup_epochs"] > 1 and PORTFOLIO[0]["batch_size"] != 32
    first = sample_configs({"budget": {"max_epochs": 3}, "space": {"batch_size": [32, 64]},
                            "strategy": {"warm_start": True}}, 1)[0]
    assert first["warmup_epochs"] <= 1 and first["batch_size"] in (32, 64)
    assert first["lr"] == PORTFOLIO[0]["lr"] and first["backbone"] == PORTFOLIO[0]["backbone"]
