"""The service keeps one Optuna storage, and its trial cache, for every request: what the job's
driver writes from another connection still shows up at once."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from automl.service.service import JobService
from automl.settings import Settings
from storage.optuna_storage import optuna_storage


def test_service_sees_trials_the_driver_reports_and_tells(pg_url: str, tmp_path: Path) -> None:
    service = JobService(Settings(home=tmp_path / "automl-data", database_url=pg_url))
    service.store.submit("cached", "cached", {})
    strategy = Strategy(SearchSpace(max_epochs=3), seed=0, warm_start=False)
    driver = strategy.create_study(optuna_storage(pg_url, private=True), "cached")  # the runner's

    def seen() -> dict[int, tuple[str, object, dict[str, float]]]:
        return {t.number: (t.state, t.value, t.intermediate_values)
                for t in service.trials("cached").trials}

    assert seen() == {}
    first = driver.ask()
    strategy.space.sample(first)
    first.report(0.5, 1)
    assert seen() == {0: ("running", None, {"1": 0.5})}

    first.report(0.75, 2)
    driver.tell(first, 0.75)
    second = driver.ask()
    strategy.space.sample(second)
    second.report(0.25, 1)
    assert seen() == {0: ("complete", 0.75, {"1": 0.5, "2": 0.75}),
                      1: ("running", None, {"1": 0.25})}

    driver.tell(second, state=TrialState.PRUNED)
    assert seen() == {0: ("complete", 0.75, {"1": 0.5, "2": 0.75}),
                      1: ("pruned", 0.25, {"1": 0.25})}  # Optuna keeps the last value
    assert service.trials("cached").trials[0].params == first.params


def test_a_trial_enqueued_elsewhere_is_asked_next(pg_url: str) -> None:
    """Asking skips the cache's refresh of running trials, yet finds every waiting trial."""
    strategy = Strategy(SearchSpace(max_epochs=3), seed=0, warm_start=False)
    driver = strategy.create_study(optuna_storage(pg_url), "queued")
    running = driver.ask()
    strategy.space.sample(running)
    elsewhere = strategy.load_study(optuna_storage(pg_url, private=True), "queued")  # another process
    elsewhere.enqueue_trial({"optimizer": "sgd", "lr": 0.05})

    trial = driver.ask()
    config = strategy.space.sample(trial)

    assert (trial.number, config["optimizer"], config["lr"]) == (1, "sgd", 0.05)
    assert driver.ask().number == 2  # popped once: the queue is empty again
    driver.tell(0, state=TrialState.PRUNED)
    counts = [driver._storage.get_n_trials(driver._study_id, state)
              for state in (None, TrialState.RUNNING, (TrialState.PRUNED, TrialState.WAITING))]
    assert counts == [3, 2, 1]  # counted in the database, as the job heartbeat does


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_what_a_running_trial_writes_lands_once_and_only_while_it_runs(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Parameters, epoch values and attributes are written with one statement each; what another
    process reads back is exactly what was written, and a finished trial refuses more."""
    url = (request.getfixturevalue("pg_url") if database == "postgresql"
           else f"sqlite:///{tmp_path / 'study.db'}")
    strategy = Strategy(SearchSpace(max_epochs=3), seed=0, warm_start=False)
    driver = strategy.create_study(optuna_storage(url), "params")
    sampled = []
    for _ in range(3):  # the first trial takes Optuna's path for each name, later ones the INSERT
        trial = driver.ask()
        strategy.space.sample(trial)
        sampled.append(trial.params)
        driver.tell(trial, 0.5)

    elsewhere = strategy.load_study(optuna_storage(url, private=True), "params")  # a restarted driver
    assert [t.params for t in elsewhere.trials] == sampled
    assert len(sampled[2]) > 10
    resumed = elsewhere.ask()  # its cache knows every name's distribution from the trials read
    strategy.space.sample(resumed)
    elsewhere.tell(resumed, 0.5)
    sampled.append(resumed.params)
    again = strategy.load_study(optuna_storage(url, private=True), "params")
    assert [t.params for t in again.trials] == sampled

    reporting = driver.ask()
    curve = {1: 0.25, 2: float("nan"), 3: float("inf"), 4: float("-inf")}
    for step, value in curve.items():
        reporting.report(value, step)
    reporting.set_user_attr("ray_trial_id", "abc")
    driver._storage.set_trial_system_attr(reporting._trial_id, "completed_rung_0", 0.25)
    driver._storage.set_trial_system_attr(reporting._trial_id, "completed_rung_0", 0.5)  # update
    read = strategy.load_study(optuna_storage(url, private=True), "params").trials[-1]
    assert str(read.intermediate_values) == str(curve)  # nan == nan only as text
    assert (read.user_attrs, read.system_attrs) == ({"ray_trial_id": "abc"}, {"completed_rung_0": 0.5})
    driver.tell(reporting, 0.25)

    finished = driver.trials[2]
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        driver._storage.set_trial_intermediate_value(finished._trial_id, 7, 0.1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        driver._storage.set_trial_param(finished._trial_id, "lr", 0.1, finished.distributions["lr"])
    with pytest.raises(ValueError, match="Cannot set different distribution kind"):
        running = driver.ask()
        driver._storage.set_trial_param(running._trial_id, "lr", 0.0,
                                        optuna.distributions.CategoricalDistribution([0.1]))
    assert elsewhere.trials[2].params == sampled[2]
