"""Job specs are validated whole: every refusal names its field, and whatever arrives is a
spec or a SpecError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from automl.errors import SpecError
from automl.jobs.driver import strategy_for
from automl.search.spec import parse_spec
from tests.support import MINIMAL_JOB


def spec_error(**changes: Any) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec({**MINIMAL_JOB, **changes})
    return str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"budget": {"n_trials": 0}}, "budget.n_trials: Input should be greater than or equal to 1"),
        ({"budget": {"max_epochs": 0}}, "budget.max_epochs"),
        ({"budget": {"time_limit": "soon"}}, "is not a duration"),
        ({"budget": {"time_limit": -5}}, "time_limit must be positive"),
        ({"budget": {"target": 2.0}}, "budget.target=2.0: val_accuracy lies in (0, 1]"),
        ({"resources": {"gpu": -1}}, "resources.gpu"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
        ({"strategy": {"sampler": "bayes"}}, "'tpe', 'random', 'gp', 'cmaes' or 'nsga2'"),
        ({"strategy": {"pruner": "asha"}}, "'hyperband', 'sha', 'median', 'none' or 'freeze-thaw'"),
        ({"objective": {"metric": "val_loss", "direction": "maximize"}}, "can only be minimized"),
        ({"objective": {"metric": "accuracy"}}, "objective.metric"),
        ({"budgets": {}}, "budgets: unknown field"),
        ({"name": "My Job"}, "name: String should match pattern"),
        ({"name": False}, "got False (YAML reads an unquoted yes/no/on/off/true/false or number"),
        ({"dataset": {"source": "x", "val_fraction": 0.5, "test_fraction": 0.5}}, "must leave"),
        ({"space": {"backbone": ["resnet50", "resnet5O"]}}, "space.backbone: unknown backbone 'resnet5O'"),
        ({"space": {"lrr": 0.1}}, "space.lrr: unknown parameter; did you mean lr?"),
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "space.lr: low=0.1 must be below high=0.01"),
        ({"space": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
        ({"space": {"optimizer": ["adamw", "lamb"]}}, "optimizer='lamb' is not one of"),
        ({"space": {"optimizer": {"low": 1, "high": 2}}}, "space.optimizer"),
        ({"space": {"epochs": 5}}, "space.epochs: set it with budget.max_epochs"),
        ({"space": {"milestones": [3, 6]}}, "one milestones value is a list in a list: milestones: [["),
        ({"space": {"warmup_epochs": 20}}, "warmup_epochs=20 must be in [0, epochs=10)"),
        ({"space": {"decay_rate": [0.5, 1.0]}}, "space.decay_rate: decay_rate=1.0 must be in (0, 1)"),
        ({"strategy": {"sampler_options": {"bogus": 1}}},
         "strategy.sampler_options.bogus: not an option of the random sampler; it takes none"),
        ({"strategy": {"sampler": "tpe", "sampler_options": {"seed": 3}}},
         "strategy.sampler_options.seed: not an option"),  # strategy.seed sets it
        ({"strategy": {"sampler": "tpe", "sampler_options": {"n_startup_trials": 2.5}}},
         "strategy.sampler_options.n_startup_trials: takes int, not a number"),
        ({"strategy": {"sampler": "tpe", "sampler_options": {"multivariate": 1}}},
         "strategy.sampler_options.multivariate: takes bool or null, not a whole number"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}},
         "space.lr: a log range takes no step"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "log": "yes"}}}, "space.lr: log is true or false"),
        ({"space": {"lr": {"low": 1e-4, "high": 1e-2, "step": 1}}},
         "space.lr: step must be a positive number no larger than high - low"),
        ({"strategy": {"pruner": "hyperband", "pruner_options": {"reduction_factr": 3}}},
         "strategy.pruner_options.reduction_factr: not an option of the hyperband pruner; it "
         "takes bootstrap_count, max_resource, min_resource, reduction_factor"),
        ({"strategy": {"pruner": "median", "pruner_options": {"n_startup_trials": -1}}},
         "strategy.pruner_options: "),  # a plain value the pruner itself refuses
        ({"budget": {"max_epochs": 3}, "strategy": {"pruner_options": {"min_resource": 3}}},
         "min_resource=3 is not below budget.max_epochs=3: the pruner could never stop a trial"),
        ({"objective": {"metrics": ["val_accuracy", "val_accuracy"]}},
         "objective.metrics: val_accuracy named twice"),
        ({"objective": {"limits": {"latency_ms": -1}}},
         "objective.limits.latency_ms=-1.0: a limit must be above 0"),
        ({"objective": {"limits": {"gpu_hours": 1}}},
         "objective.limits.gpu_hours: unknown cost; limits take params_m, macs_g, latency_ms"),
        ({"objective": {"metrics": ["val_accuracy", "latency_ms"], "limits": {"val_accuracy": 0.9}}},
         "objective.limits.val_accuracy: a limit is an upper bound on a cost, and val_accuracy is "
         "what the search maximizes: it contradicts the objective"),
        ({"objective": {"metrics": ["latency_ms", "params_m"]}},
         "a Pareto front is one validation metric and at least one cost"),
        ({"objective": {"metrics": ["val_accuracy", "latency_ms"], "metric": "val_f1"}},
         "objective.metric=val_f1 is not the validation metric of objective.metrics"),
        ({"objective": {"metrics": ["val_accuracy", "latency_ms"]}, "strategy": {"pruner": "hyperband"}},
         "strategy.pruner: hyperband cannot prune a Pareto front"),
        ({"objective": {"latency": {"threads": 0}}}, "objective.latency.threads"),
        ({"checkpoints": {"keep_trials": 0}}, "checkpoints.keep_trials"),
    ],
)
def test_bad_specs_name_the_field(changes: dict[str, Any], message: str) -> None:
    assert message in spec_error(**changes)


def test_missing_dataset_is_named() -> None:
    with pytest.raises(SpecError, match="dataset: required field is missing"):
        parse_spec({"name": "t"})


JSON_SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))


JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


FIELDS = ("name", "dataset", "objective", "budget", "max_concurrent_trials", "resources",
          "max_failures", "strategy", "space")


SPEC_LIKE = st.fixed_dictionaries(
    {"name": st.sampled_from(["t", "ok-job", "Bad Name", ""]) | JSON_SCALARS,
     "dataset": st.just({"source": "builtin:digits"}) | JSON_VALUES},
    optional={field: JSON_VALUES for field in FIELDS[2:]}
    | {"budget": st.fixed_dictionaries({}, optional={
        "n_trials": JSON_SCALARS, "max_epochs": JSON_SCALARS, "time_limit": JSON_SCALARS,
        "target": JSON_SCALARS})},
)


@given(payload=SPEC_LIKE)
@hypothesis_settings(max_examples=300, deadline=None)
def test_any_payload_is_a_spec_or_a_spec_error(payload: dict[str, Any]) -> None:
    """Whatever arrives, validation says yes or names the problem: never another exception
    (that would be a 500 over HTTP), and what it accepts is storable JSON that reads back the
    same."""
    import json

    try:
        spec = parse_spec(payload)
    except SpecError as error:
        assert str(error).strip()
        return
    stored = json.dumps(spec.model_dump(mode="json"), allow_nan=False)
    assert parse_spec(json.loads(stored)) == spec


def test_a_job_builds_its_search_space_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validating a spec builds its space (every override checked against the engine, backbone
    names against timm); every later part of the job reuses it rather than paying for that
    again."""
    from automl.jobs.preflight import check_pretrained_weights
    from automl.search import space as space_module
    from automl.search.paths import paths_read

    built: list[object] = []
    real = space_module.SearchSpace.from_spec.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any) -> Any:
        built.append(args)
        return real(cls, *args)

    monkeypatch.setattr(space_module.SearchSpace, "from_spec", classmethod(counting))
    spec = parse_spec({**MINIMAL_JOB, "space": {"backbone": ["resnet18", "resnet34"], "pretrained": False}})
    strategy_for(spec, 1797)
    check_pretrained_weights(spec)
    paths_read(spec)
    spec.model_copy()
    assert len(built) == 1
