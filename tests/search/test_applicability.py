"""The warm start is switched off where its portfolio's knowledge does not apply to the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from automl.jobs.driver import strategy_for
from automl.search.applicability import RECORDED_BACKBONES, architecture, warm_start_off
from automl.search.spec import parse_spec
from automl.search.strategy import portfolio_for
from tests.support import MINIMAL_JOB


def _spec(space: dict[str, Any], warm_start: bool = True) -> Any:
    return parse_spec({**MINIMAL_JOB, "space": space, "budget": {"max_epochs": 10},
                       "strategy": {"seed": 0, "warm_start": warm_start}})


@pytest.mark.parametrize(("space", "said"), [
    ({"backbone": "resnet10t.c3_in1k"}, "no recorded run used backbone resnet10t.c3_in1k"),
    ({"backbone": ["resnet10t", "resnet18"]}, "no recorded run used backbone resnet10t, resnet18"),
    ({"backbone": "resnet10t", "pretrained": "/weights/mine.safetensors"},
     "from the user's weights (pretrained: /weights/mine.safetensors)"),
    ({"pretrained": "/weights/mine.safetensors"}, "from the user's weights"),
    ({"backbone": "convnext_small.fb_in22k_ft_in1k_384", "pretrained": False}, "from scratch"),
])
def test_a_job_outside_the_recorded_runs_gets_no_portfolio_and_says_why(
    space: dict[str, Any], said: str
) -> None:
    spec = _spec(space)
    reason = warm_start_off(spec.search_space())
    assert reason is not None and said in reason and "\n" not in reason
    strategy = strategy_for(spec, 3000)
    assert strategy.portfolio == ()
    study = strategy.create_study(optuna.storages.InMemoryStorage(), "s")
    trial = strategy.ask(study)
    assert trial.number == 0 and not study.get_trials()[0].system_attrs.get("fixed_params")


@pytest.mark.parametrize("space", [
    {},  # the default space
    {"backbone": ["convnext_small.fb_in22k_ft_in1k_384", "resnet18"]},  # one recorded among them
    {"backbone": "volo_d1_384"},  # a recorded architecture, timm's default tag
    {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "pretrained": True},
])
def test_a_job_inside_the_recorded_runs_keeps_its_portfolio(space: dict[str, Any]) -> None:
    spec = _spec(space)
    assert warm_start_off(spec.search_space()) is None
    assert strategy_for(spec, 3000).portfolio == portfolio_for(3000)


def test_the_recorded_backbones_are_judged_by_architecture() -> None:
    assert architecture("hf-hub:timm/resnet10t.c3_in1k") == "resnet10t"
    assert "resnet10t" not in {architecture(b) for b in RECORDED_BACKBONES}
    spec = _spec({"backbone": "resnet10t"})
    assert warm_start_off(spec.search_space(), recorded=["resnet10t.a1_in1k"]) is None


def test_the_study_records_why_the_warm_start_is_off() -> None:
    """The driver creates the job's study with the reason as its `warm_start_off` attribute; a
    spec that turned the warm start off itself, or one it applies to, has none."""
    from automl.jobs.driver import study_attrs
    from automl.search import keys

    attrs = study_attrs(_spec({"backbone": "resnet10t", "pretrained": "/w/mine.safetensors"}))
    assert "pretrained: /w/mine.safetensors" in attrs[keys.WARM_START_OFF]
    assert keys.SPEC in attrs and keys.STARTED_AT in attrs
    assert keys.WARM_START_OFF not in study_attrs(_spec({"backbone": "resnet10t"}, warm_start=False))
    assert keys.WARM_START_OFF not in study_attrs(_spec({}))


def test_automl_run_says_the_warm_start_is_off_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the job starts, `automl run` says why it tries no portfolio (the job itself is
    stopped here before Ray: only the printed line is under test)."""
    import json

    from typer.testing import CliRunner

    from automl.cli import app
    from automl.errors import JobError
    from automl.jobs import process
    from tests.support import DIGITS_JOB  # pretrained: false

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise JobError("stopped by the test")

    monkeypatch.setattr(process, "execute_job", refused)
    monkeypatch.chdir(tmp_path)
    for warm, said in ((True, ["warm start off: trials start from scratch (pretrained: false)"]),
                       (False, [])):
        job = tmp_path / "job.yaml"
        job.write_text(json.dumps({**DIGITS_JOB, "strategy": {"seed": 0, "warm_start": warm}}))
        result = CliRunner().invoke(app, ["run", str(job)])
        assert "stopped by the test" in result.output, result.output
        lines = [line.split(";")[0] for line in result.output.splitlines() if "warm start" in line]
        assert lines == said
