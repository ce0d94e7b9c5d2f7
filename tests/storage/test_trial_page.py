"""A page of a study's trials, read from the database itself (`GET /jobs/{id}/trials`)."""

from __future__ import annotations

from typing import Any

import optuna
from sqlalchemy import event

from storage.optuna_storage import optuna_storage, trial_page


def test_a_page_of_trials_is_a_fixed_number_of_queries_and_the_trials_as_they_are(
    pg_url: str,
) -> None:
    """A page costs the same few queries however many trials it holds, not a few per trial:
    the API and the dashboard page through studies of thousands."""
    storage = optuna_storage(pg_url)
    study = optuna.create_study(storage=storage, study_name="paged", direction="maximize")
    for number in range(30):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("config", {"backbone": "resnet18", "n": number})
        for epoch in range(1, 4):
            trial.report(number / 100 + epoch, epoch)
        if number % 3:
            study.tell(trial, number / 30)
    study_id = study._study_id
    rdb = storage._backend  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    pages = {}
    for limit in (5, 25):
        statements.clear()
        event.listen(rdb.engine, "before_cursor_execute", count)
        try:
            pages[limit] = trial_page(storage, study_id, limit, offset=3)
        finally:
            event.remove(rdb.engine, "before_cursor_execute", count)
        assert len(statements) <= 7, statements
    trials, total = pages[25]
    assert total == 30 and [t.number for t in trials] == list(range(3, 28))
    assert [t.number for t in pages[5][0]] == [3, 4, 5, 6, 7]
    for got in trials:
        want = study.trials[got.number]
        assert (got.state, got.params, got.values, got.intermediate_values, got.user_attrs) == (
            want.state, want.params, want.values, want.intermediate_values, want.user_attrs)
        assert got.distributions == want.distributions
