"""Freeze-thaw in the replay: pausing and resuming as a job does, and a curve model fitted
without the dataset being scored."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from automl.search.curve_model import BUCKETS, CurveModel, LearnedFreezeThaw, shipped
from automl.search.freeze_thaw import Curve, FreezeThaw
from automl.search.space import SearchSpace
from automl.search.strategy import Strategy
from benchmarks import freeze_thaw_replay
from benchmarks.freeze_thaw_replay import checkpoint_seconds, drive_paused, held_out_model
from benchmarks.replay import _one, load_pools
from tests.benchmarks.test_replay import write_recorded_runs


class PauseFirstOnce(FreezeThaw):
    """Pauses trial 0 after its epoch 2; resumes it once another trial has completed."""

    def should_pause(self, curve: Curve, curves: Sequence[Curve]) -> bool:
        return curve.number == 0 and curve.epochs == 2

    def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
        done = any(c.state == "complete" for c in curves)
        return paused[0].number if done else None


def scripted(decision: FreezeThaw, monkeypatch: pytest.MonkeyPatch) -> Strategy:
    """A `pruner: freeze-thaw` strategy whose policy is `decision`: the replay asks only the
    strategy for it, as a job's bridge does."""
    strategy = Strategy(SearchSpace(max_epochs=50), sampler="random", pruner="freeze-thaw",
                        seed=0, warm_start=False)
    monkeypatch.setattr(strategy, "_make_freeze_thaw", lambda: decision)
    return strategy


def test_a_paused_run_resumes_where_its_curve_stood_and_the_checkpoint_is_charged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_recorded_runs(tmp_path)
    pool = load_pools(tmp_path)["D0"]
    strategy = scripted(PauseFirstOnce(50), monkeypatch)
    log: list[tuple[float, str, int, int]] = []
    trials = drive_paused(strategy, pool, workers=1, horizon=10_000,
                          seen=lambda now, run, value: False, params={}, log=log)
    first = trials[0]
    save, load = checkpoint_seconds(first.run.config["backbone"], {})
    assert (save, load) == (pytest.approx(2 + 30e6 * 12 / 200e6), pytest.approx(5 + 1.8))
    events = [(t, what, epoch) for t, what, n, epoch in log if n == 0]
    kinds = [what for _, what, _ in events]
    assert kinds[:5] == ["start", "epoch", "epoch", "pause", "resume"]
    # its epochs continue after the pause: 1, 2, 3, ... to the end of its curve, each once
    epochs = [epoch for _, what, epoch in events if what == "epoch"]
    assert epochs == list(range(1, len(first.run.curve) + 1))
    assert kinds[-1] == "complete"
    # the one slot: busy saving after the pause, then trial 1 starts; loading before epoch 3
    paused_at = events[3][0]
    started = next(t for t, what, n, _ in log if n == 1 and what == "start")
    assert started == pytest.approx(paused_at + save)
    resumed_at = events[4][0]
    third = next(t for t, what, e in events if what == "epoch" and e == 3)
    assert third == pytest.approx(resumed_at + load + first.run.cost[2])
    # one Optuna trial, one continuous curve, nothing reported twice
    trial = first.trial.study.trials[0]
    assert trial.state.name == "COMPLETE"
    assert trial.intermediate_values == {e: v / 100 for e, v in enumerate(first.run.curve, 1)}
    assert first.curve.values == trial.intermediate_values


def test_paused_trials_left_at_the_end_are_pruned(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_recorded_runs(tmp_path)
    pool = load_pools(tmp_path)["D0"]

    class NeverResume(PauseFirstOnce):
        def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
            return None

    trials = drive_paused(scripted(NeverResume(50), monkeypatch), pool, workers=2, horizon=2_000,
                          seen=lambda now, run, value: False, params={})
    assert trials[0].curve.state == "pruned"
    assert trials[0].trial.study.trials[0].state.name == "PRUNED"
    assert sorted(trials[0].curve.values) == [1, 2]


def test_the_curve_model_is_fitted_without_the_scored_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_recorded_runs(tmp_path)
    pools = load_pools(tmp_path)
    before = held_out_model(pools, "D0")
    pools["D0"].runs[:] = [r.__class__(r.config, tuple(100 - v for v in r.curve), r.cost)
                           for r in pools["D0"].runs]  # the held-out dataset changes: nothing does
    assert held_out_model(pools, "D0") == before
    assert held_out_model(pools, "D1") != held_out_model(load_pools(tmp_path), "D1")

    fitted: list[int] = []
    real_fit = freeze_thaw_replay.fit

    def counted(curves: list[list[float]], origin: str = "") -> CurveModel:
        fitted.append(len(curves))
        return real_fit(curves, origin)

    monkeypatch.setattr(freeze_thaw_replay, "fit", counted)
    cell = _one((tmp_path, "D0", "freeze-thaw", 0, 2, (120.0, 600.0)))
    others = sum(len(p.runs) for d, p in load_pools(tmp_path).items() if d != "D0")
    assert fitted == [others] and all(0 <= r <= 1 for r in cell.regrets)


def test_the_shipped_curve_model_loads_and_predicts() -> None:
    model = shipped()
    assert len(model.coef) == len(model.sigma) == len(model.remaining) == len(BUCKETS)
    assert "13 datasets" in model.origin
    mean, sigma = model.predict([0.2, 0.5])
    assert mean >= 0.5 and sigma > 0
    decision = LearnedFreezeThaw(50)
    a = Curve(0, {}, {1: 0.2, 2: 0.5}, {1: 10.0, 2: 10.0}, "paused")
    b = Curve(1, {}, {1: 0.9, 2: 0.91, 3: 0.92}, {1: 10.0, 2: 10.0, 3: 10.0})
    assert decision.choose([a], [a, b]) in (0, None)


def test_replay_prints_the_pausing_arms_and_the_per_dataset_table(tmp_path: Path) -> None:
    write_recorded_runs(tmp_path)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("automl-bench")), "replay", "--data", str(tmp_path),
         "--workers", "2", "--seeds", "1", "--budgets", "120,600", "--processes", "1",
         "--strategies", "asha,default,asha-promotion,hyperband-pause,freeze-thaw"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "freeze-thaw / asha:" in done.stdout and "hyperband-pause / asha:" in done.stdout
    assert "per dataset" in done.stdout and "D2" in done.stdout


def test_hyperband_with_pausing_ranks_a_trial_in_its_own_bracket_only() -> None:
    from automl.search.curve_model import PausingHyperband

    decision = PausingHyperband(50)
    assert [b.rungs()[0] for b in decision.brackets] == [1, 3, 9, 27]
    # trials 0 and 4 share bracket 0 (first rung: epoch 1); trial 1 is in bracket 1
    low = Curve(0, {}, {1: 0.1})
    high = Curve(4, {}, {1: 0.9})
    other = Curve(1, {}, {1: 0.05})
    curves = [low, other, high]
    assert decision.should_pause(low, curves) and not decision.should_pause(high, curves)
    assert not decision.should_pause(other, curves)  # epoch 1 is no rung of bracket 1


def test_the_learned_decision_resumes_what_it_expects_to_beat_the_incumbent() -> None:
    model = shipped()
    decision = LearnedFreezeThaw(50, model=model)
    seconds = {e: 10.0 for e in range(1, 4)}
    rising = Curve(0, {}, {1: 0.30, 2: 0.60}, dict(list(seconds.items())[:2]), "paused")
    flat = Curve(1, {}, {1: 0.10, 2: 0.10}, dict(list(seconds.items())[:2]), "paused")
    incumbent = Curve(2, {}, {1: 0.62, 2: 0.63, 3: 0.64}, seconds)
    curves = [rising, flat, incumbent]
    assert decision.rate(rising, 0.64) > decision.rate(flat, 0.64)
    assert decision.choose([flat], curves) is None  # a hopeless one: a new configuration
    assert decision.choose([rising, flat], curves) == 0


def test_the_replays_arms_are_job_strategies_and_their_one_policy() -> None:
    """Each pausing arm is a `pruner: freeze-thaw` Strategy; the policy the replay drives is
    the one `Strategy.freeze_thaw()` hands a job's bridge (made once, the same object after)."""
    from automl.search.curve_model import PausingHyperband
    from automl.search.freeze_thaw import PromotionAsha
    from benchmarks.replay import PAUSING, make_strategy

    model = shipped()
    kinds = {"asha-promotion": PromotionAsha, "default-promotion": PromotionAsha,
             "hyperband-pause": PausingHyperband, "freeze-thaw": LearnedFreezeThaw,
             "freeze-thaw-early": LearnedFreezeThaw}
    for name in PAUSING:
        strategy = make_strategy(name, 0, (), model)
        assert strategy.pruner == "freeze-thaw"
        policy = strategy.freeze_thaw()
        assert type(policy) is kinds[name] and strategy.freeze_thaw() is policy
    learned = make_strategy("freeze-thaw", 0, (), model).freeze_thaw()
    assert isinstance(learned, LearnedFreezeThaw) and learned.model is model and not learned.early
    early = make_strategy("freeze-thaw-early", 0, (), model).freeze_thaw()
    assert isinstance(early, LearnedFreezeThaw) and early.early


def test_no_more_trials_stay_paused_than_a_job_keeps(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy that pauses everything at epoch 1 and never resumes: as in a job, at most
    `max_paused(workers)` are paused at once; the worst beyond it is given up (pruned)."""
    write_recorded_runs(tmp_path)
    pool = load_pools(tmp_path)["D0"]

    class PauseAll(FreezeThaw):
        def should_pause(self, curve: Curve, curves: Sequence[Curve]) -> bool:
            return curve.epochs == 1

        def choose(self, paused: Sequence[Curve], curves: Sequence[Curve]) -> int | None:
            return None

    log: list[tuple[float, str, int, int]] = []
    drive_paused(scripted(PauseAll(50), monkeypatch), pool, workers=1, horizon=5_000,
                 seen=lambda now, run, value: False, params={}, log=log)
    paused: set[int] = set()
    most = 0
    for _, what, number, _ in log:
        if what == "pause":
            paused.add(number)
        elif what == "pruned":
            paused.discard(number)
        most = max(most, len(paused))
    assert most == FreezeThaw.max_paused(1) + 1  # the one over is given up right away
    assert sum(1 for _, what, _, _ in log if what == "pause") > FreezeThaw.max_paused(1)


def test_the_nested_choice_never_sees_the_scored_dataset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`automl-bench replay-nested`: the variant a dataset gets is chosen from inner replays of
    the other datasets only, each with a portfolio and a curve model derived without both."""
    from benchmarks import nested_variants
    from benchmarks.nested_variants import InnerCell, choose

    write_recorded_runs(tmp_path, datasets=4)
    fitted_on: list[tuple[str, frozenset[str]]] = []
    real = nested_variants.held_out_model

    def recorded(pools: dict[str, object], dataset: str) -> CurveModel:
        fitted_on.append((dataset, frozenset(pools) - {dataset}))
        return real(pools, dataset)  # type: ignore[arg-type]

    monkeypatch.setattr(nested_variants, "held_out_model", recorded)
    cells = nested_variants._inner((tmp_path, "D0", "D1", ("learned", "promotion"), 1, 2,
                                    (120.0, 600.0)))
    assert {(c.excluded, c.scored) for c in cells} == {("D0", "D1")}
    assert fitted_on == [("D1", frozenset({"D2", "D3"}))]
    # the choice: lowest inner regret, each budget weighed alike
    inner = [InnerCell("D0", "D1", "a", 0, (0.2, 0.010)), InnerCell("D0", "D2", "a", 0, (0.2, 0.010)),
             InnerCell("D0", "D1", "b", 0, (0.1, 0.030)), InnerCell("D0", "D2", "b", 0, (0.1, 0.030)),
             InnerCell("D3", "D1", "a", 0, (0.9, 0.9)), InnerCell("D3", "D1", "b", 0, (0.1, 0.1))]
    assert choose(inner, "D0", ["a", "b"], 2) == "a"  # 2/3 + 1/2 < 4/3 + 3/2
    assert choose(inner, "D3", ["a", "b"], 2) == "b"


def test_the_early_learned_pause_pauses_a_hopeless_trial_before_the_first_rung() -> None:
    decision = LearnedFreezeThaw(50, model=shipped(), early=True)
    seconds = {e: 10.0 for e in range(1, 4)}
    good = Curve(0, {}, {1: 0.80, 2: 0.85, 3: 0.86}, seconds)
    hopeless = Curve(1, {}, {1: 0.01}, {1: 10.0})
    assert decision.should_pause(hopeless, [good, hopeless])
    assert not LearnedFreezeThaw(50, model=shipped()).should_pause(hopeless, [good, hopeless])
