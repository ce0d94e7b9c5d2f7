"""Dataset sources as a user names them (through `automl train-one`), and settings refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automl.cli import app
from tests.support import run_cli

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "resnet10"], "close matches: resnet10t"),
        (["--set", "lrr=0.1"], "did you mean lr"),
        (["--set", "optimizer=lamb"], "optimizer='lamb' is not one of adamw, sgd, adam"),
        (["--set", "lr=fast"], "lr='fast' has the wrong type"),
        (["--set", "lr"], "expected key=value"),
        (["--set", "warmup_epochs=20"], "warmup_epochs=20 must be in [0, epochs=10)"),
        (["--set", "val_fraction=0.6", "--set", "test_fraction=0.5"], "leaves no training"),
        (["--set", "freeze_stages=9", "--backbone", "test_resnet"], "use 0..5 or 'all'"),
    ],
)
def test_bad_settings_are_refused_by_name(args: list[str], message: str) -> None:
    code, output = run_cli("--dataset", "builtin:digits", *args)
    assert code == 2
    assert message in " ".join(output.split())


def test_train_one_prints_one_json_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train-one",
            "--dataset",
            "builtin:digits",
            "--backbone",
            "test_resnet",
            "--epochs",
            "1",
            "--set",
            "img_size=32",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["epoch"] == 1 and 0.0 <= line["val_accuracy"] <= 1.0
    assert Path(line["checkpoint"]).joinpath("model.safetensors").is_file()
