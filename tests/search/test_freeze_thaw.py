"""The anchor freeze-thaw policy: promotion-type ASHA pauses what successive halving would prune
and resumes it once the rung's cut has moved below it."""

from __future__ import annotations

import pytest

from automl.search.freeze_thaw import Curve, PromotionAsha


def curve(number: int, *values: float, state: str = "running") -> Curve:
    return Curve(number, {}, {e: v for e, v in enumerate(values, 1)}, state=state)


def test_rungs_grow_by_the_reduction_factor_below_max_epochs() -> None:
    assert PromotionAsha(20, min_resource=2, reduction_factor=3).rungs() == [2, 6, 18]
    with pytest.raises(ValueError):
        PromotionAsha(10, reduction_factor=1)


def test_a_trial_outside_the_top_third_of_its_rung_pauses_and_resumes_when_the_cut_moves() -> None:
    policy = PromotionAsha(10, min_resource=2, reduction_factor=3)
    curves = [curve(0, 0.5, 0.9), curve(1, 0.4, 0.8), curve(2, 0.3, 0.7)]
    assert not policy.should_pause(curves[0], curves)  # the best of three at epoch 2
    assert policy.should_pause(curves[2], curves)
    assert not policy.should_pause(curve(3, 0.1), curves)  # epoch 1: no rung
    paused = [curve(2, 0.3, 0.7, state="paused")]
    assert policy.choose(paused, [*curves[:2], *paused]) is None  # still below the cut
    # three more trials arrive below it: six reached the rung, the top two go on, 0.7 is 3rd
    later = [*curves[:2], *paused, curve(4, 0.2, 0.1), curve(5, 0.2, 0.2), curve(6, 0.1, 0.3)]
    assert policy.choose(paused, later) is None
    much_later = [*later, *(curve(n, 0.1, 0.05) for n in range(7, 10))]
    assert policy.choose(paused, much_later) == 2  # nine reached it: the top three, 0.7 among them
    assert policy.give_up(much_later) == [2]


def test_minimizing_ranks_the_other_way() -> None:
    policy = PromotionAsha(10, maximize=False, min_resource=1, reduction_factor=2)
    curves = [curve(0, 0.2), curve(1, 0.9)]
    assert policy.should_pause(curves[1], curves) and not policy.should_pause(curves[0], curves)


def test_beyond_max_paused_the_worst_paused_trial_is_evicted() -> None:
    """The bound a job's bridge and the replay both apply: twice the concurrency, at least 4."""
    policy = PromotionAsha(10, min_resource=1, reduction_factor=2)
    assert policy.max_paused(1) == 4 and policy.max_paused(3) == 6
    paused = [curve(n, 0.1 * (n + 1), state="paused") for n in range(4)]
    assert policy.evict(paused, 1) is None
    assert policy.evict([*paused, curve(9, 0.05, state="paused")], 1) == 9
    low = PromotionAsha(10, maximize=False, min_resource=1, reduction_factor=2)
    assert low.evict([*paused, curve(9, 0.05, state="paused")], 1) == 3  # 0.4: worst minimized
