"""The Ray Tune internal the bridge relies on (automl/tune/_ray.py), checked on the installed Ray:
an upgrade that changes it fails here, by name, not as trials retried in every job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune

from automl.tune._ray import no_retries

pytestmark = pytest.mark.usefixtures("local_ray")


def fails_every_time(config: dict[str, Any]) -> None:
    if config["say_so"]:
        tune.report({"say_so": True})
    raise RuntimeError("the same error on every try")


class NoRetriesWhenSaid(tune.Callback):
    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if result.get("say_so"):
            no_retries(trial)


def test_a_trial_taken_off_retries_fails_once_and_another_is_still_retried(tmp_path: Path) -> None:
    tune.Tuner(
        fails_every_time,
        param_space={"say_so": tune.grid_search([True, False])},
        run_config=tune.RunConfig(name="internals", storage_path=str(tmp_path), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  callbacks=[NoRetriesWhenSaid()]),
    ).fit()
    trials = tune.ExperimentAnalysis(str(tmp_path / "internals")).trials
    failures = {t.config["say_so"]: t.run_metadata.num_failures for t in trials}
    assert failures == {True: 1, False: 3}, f"ray {ray.__version__}: {failures}"


def test_what_data_parallel_trials_rely_on_in_ray_train() -> None:
    """`workers.tune_adapter.run_group` aborts a stopped group's controller by its `abort`
    (the one Ray's own Ctrl-C handler calls), hears of reports through `after_report`, and the
    driver's reaper (`automl.tune.groups`) rebuilds a placement group from its hex id."""
    import inspect

    from ray._raylet import PlacementGroupID
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2.api.callback import UserCallback

    assert inspect.iscoroutinefunction(TrainController.abort)
    assert list(inspect.signature(UserCallback.after_report).parameters) == [
        "self", "run_context", "metrics", "checkpoint"]
    assert PlacementGroupID(bytes.fromhex("ab" * 18)).hex() == "ab" * 18
