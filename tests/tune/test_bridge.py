"""The bridge (automl/tune/bridge.py), driven as Ray Tune drives it, on a real Optuna study:
the searcher asks the study, the scheduler reports each epoch and prunes, and every trial is
told once, in the study's words."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from ray.tune.experiment import Trial as RayTrial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from automl.search import keys
from automl.search.space import SearchSpace
from automl.search.spec import parse_spec
from automl.search.strategy import Strategy
from automl.tune.bridge import OptunaPruningScheduler, OptunaSearcher, StudyLink, bridge
from storage.optuna_storage import optuna_storage
from tests.support import DIGITS_JOB, load_study
from workers.tune_adapter import TRIAL_ERROR

STUDY = "bridge"
FIXED = {"data": "fixed by the job"}


def ray_trial(trial_id: str) -> RayTrial:
    """A Ray trial as Tune hands it to the scheduler (no trainable behind it)."""
    return RayTrial("fine_tune", trial_id=trial_id, stub=True, max_failures=2)


def bridged(
    url: str, n_trials: int, max_concurrent: int = 2, **strategy: Any
) -> tuple[OptunaSearcher, OptunaPruningScheduler]:
    chosen = Strategy(SearchSpace(max_epochs=3), seed=0, warm_start=False, **strategy)
    chosen.create_study(optuna_storage(url), STUDY)
    search, scheduler = bridge(StudyLink(url, STUDY, chosen), "val_accuracy", "max", FIXED,
                               n_trials, max_concurrent)
    return search.job_searcher, scheduler


def start(searcher: OptunaSearcher, scheduler: OptunaPruningScheduler, ray_id: str) -> Any:
    config = searcher.suggest(ray_id)
    if isinstance(config, dict):
        scheduler.on_trial_add(None, ray_trial(ray_id))
    return config


def epochs(scheduler: OptunaPruningScheduler, ray_id: str, *values: float) -> list[str]:
    return [scheduler.on_trial_result(None, ray_trial(ray_id), {"val_accuracy": v, "epoch": e})
            for e, v in enumerate(values, start=1)]


def end(searcher: OptunaSearcher, scheduler: OptunaPruningScheduler, ray_id: str,
        error: bool = False) -> None:
    scheduler.on_trial_complete(None, ray_trial(ray_id), {})
    searcher.on_trial_complete(ray_id, {}, error=error)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_searcher_asks_until_the_study_holds_the_budget_max_concurrent_at_a_time(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (request.getfixturevalue("pg_url") if database == "postgresql"
           else f"sqlite:///{tmp_path / 'study.db'}")
    searcher, scheduler = bridged(url, n_trials=3, max_concurrent=2)

    first, second = start(searcher, scheduler, "ray-1"), start(searcher, scheduler, "ray-2")
    assert searcher.suggest("ray-3") is None  # two run already: none yet
    assert epochs(scheduler, "ray-1", 0.5, 0.75, 0.6) == [TrialScheduler.CONTINUE] * 3
    end(searcher, scheduler, "ray-1")
    third = start(searcher, scheduler, "ray-3")
    assert searcher.suggest("ray-4") == Searcher.FINISHED  # the study holds the budget

    study = load_study(url, STUDY)
    trials = study.get_trials(deepcopy=False)
    assert [t.user_attrs[keys.RAY_TRIAL_ID] for t in trials] == ["ray-1", "ray-2", "ray-3"]
    assert [t.user_attrs[keys.CONFIG] for t in trials] == [first, second, third]
    assert all(config["data"] == FIXED["data"] for config in (first, second, third))
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == 0.75  # its best epoch
    assert trials[0].intermediate_values == {1: 0.5, 2: 0.75, 3: 0.6}
    assert [t.state for t in trials[1:]] == [TrialState.RUNNING] * 2


def test_a_pruned_trial_is_told_pruned_when_pruned_and_never_told_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, scheduler = bridged(url, n_trials=2, max_concurrent=1, pruner="median",
                                  pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0})
    start(searcher, scheduler, "ray-1")
    epochs(scheduler, "ray-1", 0.9, 0.9, 0.9)
    end(searcher, scheduler, "ray-1")
    start(searcher, scheduler, "ray-2")

    assert epochs(scheduler, "ray-2", 0.1) == [TrialScheduler.STOP]
    pruned = load_study(url, STUDY).trials[1]
    assert (pruned.state, pruned.intermediate_values) == (TrialState.PRUNED, {1: 0.1})
    end(searcher, scheduler, "ray-2")  # Tune ends the trial it was told to stop
    assert epochs(scheduler, "ray-2", 0.95) == [TrialScheduler.STOP]  # a late result
    assert load_study(url, STUDY).trials[1].state == TrialState.PRUNED


def test_a_trial_whose_own_code_raises_fails_once_with_its_error_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, scheduler = bridged(url, n_trials=2)
    start(searcher, scheduler, "ray-1")
    failing = ray_trial("ray-1")

    said = scheduler.on_trial_result(None, failing, {TRIAL_ERROR: "ValueError: no such layer"})
    assert said == TrialScheduler.CONTINUE  # the error itself comes next
    assert failing.max_failures == 0  # off Ray's retries, which are for lost workers
    scheduler.on_trial_error(None, failing)
    searcher.on_trial_complete("ray-1", None, error=True)

    failed = load_study(url, STUDY).trials[0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[keys.ERROR] == "ValueError: no such layer"
    assert scheduler.link.live == set()


def test_a_restored_bridge_finds_its_trials_in_the_study(tmp_path: Path) -> None:
    """Ray pickles both halves with its experiment; `Tuner.restore` unpickles them in another
    driver: they keep only the study's name, and find each Ray trial's Optuna trial again."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, scheduler = bridged(url, n_trials=3)
    start(searcher, scheduler, "ray-1")
    start(searcher, scheduler, "ray-2")
    epochs(scheduler, "ray-1", 0.5)

    searcher, scheduler = pickle.loads(pickle.dumps((searcher, scheduler)))
    assert scheduler.link is searcher.link and scheduler.link.live == set()
    assert scheduler.on_trial_result(None, ray_trial("ray-1"),
                                     {"val_accuracy": 0.7, "epoch": 2}) == TrialScheduler.CONTINUE
    end(searcher, scheduler, "ray-1")
    start(searcher, scheduler, "ray-3")
    assert searcher.suggest("ray-4") == Searcher.FINISHED  # counted from the study

    trials = load_study(url, STUDY).trials
    assert len(trials) == 3
    assert (trials[0].state, trials[0].intermediate_values) == (TrialState.COMPLETE, {1: 0.5, 2: 0.7})


def test_an_orphaned_trial_is_taken_over_by_the_next_suggestion(tmp_path: Path) -> None:
    """A trial asked after Ray last saved its state is one Ray never resumes but asks for
    again: the next suggestion takes it over, with the values it had, instead of adding one."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, scheduler = bridged(url, n_trials=2)
    start(searcher, scheduler, "ray-1")
    orphan = start(searcher, scheduler, "ray-2")

    searcher, scheduler = pickle.loads(pickle.dumps((searcher, scheduler)))  # a new driver
    assert scheduler.link.mark_orphans({"ray-1"}) == [1]  # Ray's saved state holds ray-1 only
    assert start(searcher, scheduler, "ray-3") == orphan
    assert searcher.suggest("ray-4") == Searcher.FINISHED

    trials = load_study(url, STUDY).trials
    assert [t.user_attrs[keys.RAY_TRIAL_ID] for t in trials] == ["ray-1", "ray-3"]
    assert trials[1].user_attrs[keys.ORPHANED] is False


def test_no_trial_starts_once_the_job_is_cancelled(tmp_path: Path) -> None:
    """Between a cancel and the stopper ending the run, Tune asks for more trials: none may
    start (it would be stopped at once and count as failed)."""
    from automl.jobs.driver import strategy_for
    from automl.tune import control

    spec = parse_spec(DIGITS_JOB)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    strategy = strategy_for(spec, 1797)
    strategy.create_study(optuna_storage(url), "cancel-race")
    searcher = OptunaSearcher(StudyLink(url, "cancel-race", strategy), "val_accuracy", "max",
                              spec.trial_settings(), n_trials=8, max_concurrent=2)
    control.register("cancel-race", control.JobControl(cancelled=lambda: True))
    try:
        assert searcher.suggest("ray-trial-1") == Searcher.FINISHED
    finally:
        control.unregister("cancel-race")
    assert searcher.suggest("ray-trial-2") is not None
    assert len(load_study(url, "cancel-race").trials) == 1


def test_a_trial_whose_worker_died_while_being_paused_goes_on_and_a_restored_one_stays_paused(
        tmp_path: Path) -> None:
    """Freeze-thaw: Ray retries a trial whose worker died while Ray was pausing it by filing it
    as pending, then adding it again; the scheduler must not set it PAUSED behind Ray's back (Ray
    then fails the whole run on an AssertionError): it goes on from its checkpoint, its pause
    undone in the study. A trial `Tuner.restore` brings back (a new driver) stays paused."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, scheduler = bridged(url, n_trials=3, max_concurrent=1, pruner="freeze-thaw",
                                  pruner_options={"min_resource": 1, "reduction_factor": 2,
                                                  "learned": False})
    start(searcher, scheduler, "a")
    assert epochs(scheduler, "a", 0.9, 0.9, 0.9)[-1] == TrialScheduler.CONTINUE
    end(searcher, scheduler, "a")
    start(searcher, scheduler, "b")
    assert epochs(scheduler, "b", 0.1) == [TrialScheduler.PAUSE]
    paused = load_study(url, STUDY).trials[1]
    assert paused.user_attrs[keys.PAUSED] == 1 and "b" in scheduler.link.paused
    restored = pickle.loads(pickle.dumps(scheduler))  # a new driver, as after Tuner.restore
    again = ray_trial("b")
    restored.on_trial_add(None, again)
    assert again.status == RayTrial.PAUSED and "b" in restored.link.paused
    # this driver: the worker died mid-pause; Ray reports the error, files it PENDING, adds it
    scheduler.on_trial_error(None, ray_trial("b"))
    retried = ray_trial("b")
    scheduler.on_trial_add(None, retried)
    assert retried.status == RayTrial.PENDING
    assert "b" not in scheduler.link.paused and "b" in scheduler.link.live
    record = load_study(url, STUDY).trials[1]
    assert record.user_attrs[keys.PAUSED] is None and record.state == TrialState.RUNNING
    assert list(record.intermediate_values) == [1]  # nothing lost, nothing counted twice


def test_freeze_thaw_sees_each_epochs_seconds_as_the_replay_does(tmp_path: Path) -> None:
    """The learned policy weighs a resume by its cost: a job's curves carry the seconds each
    epoch took (the trial's `epoch_seconds`), as the replay's carry the recorded ones."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    searcher, scheduler = bridged(url, n_trials=2, max_concurrent=1, pruner="freeze-thaw")
    start(searcher, scheduler, "a")
    for epoch, seconds in ((1, 2.5), (2, 3.5)):
        scheduler.on_trial_result(None, ray_trial("a"), {"val_accuracy": 0.5, "epoch": epoch,
                                                         "epoch_seconds": seconds})
    (curve,) = scheduler.link.curves()
    assert curve.seconds == {1: 2.5, 2: 3.5} and curve.values == {1: 0.5, 2: 0.5}
    assert scheduler.policy is scheduler.link.strategy.freeze_thaw()  # one policy per job
