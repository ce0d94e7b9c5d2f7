"""The terminal view's "best so far" names a trial the job can still publish."""

from __future__ import annotations

from automl.cli.render import LiveView


def test_best_so_far_skips_trials_that_were_pruned() -> None:
    view = LiveView("job", n_trials=3, maximize=True, metric="val_accuracy")
    for number, values, end in ((0, (0.5, 0.99, 0.6), "pruned"), (1, (0.7, 0.9), "complete"),
                                (2, (0.8,), None)):
        view.on_event("start", number)
        for value in values:
            view.on_event("report", number, value)
        if end:
            view.on_event(end, number)
    assert view.best() == (1, 0.9)  # trial 0's 0.99 epoch is gone with its pruning
    view.on_event("report", 2, 0.95)
    assert view.best() == (2, 0.95)  # a running trial's best epoch may still win
    assert "best so far: trial 2, val_accuracy 0.9500" in str(view.render().renderables[2])
