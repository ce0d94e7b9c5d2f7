"""`automl monitor`: the table, --json, --check's exit codes for cron, --html, bad input."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automl.cli import app
from storage.monitoring import HOUR, MonitorStore
from tests.serving.reference import deploy, reference, traffic
from tests.support import open_offline_page

NOW = time.time()
START = NOW - NOW % HOUR  # this hour's start: the latest window


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AUTOML_HOME with the embedded SQLite store and the default repository (models/)."""
    monkeypatch.setenv("AUTOML_HOME", str(tmp_path))
    monkeypatch.delenv("AUTOML_DATABASE_URL", raising=False)
    deploy(tmp_path / "models", "digits", 1, reference())
    deploy(tmp_path / "models", "digits", 2, reference(),
           {"monitor": {"psi": 0.2, "accuracy_drop": 0.05, "min_predictions": 40}})
    return tmp_path


def store_in(home: Path) -> MonitorStore:
    return MonitorStore(f"sqlite:///{home / 'automl.db'}")


def monitor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["monitor", *args])
    return result.exit_code, result.output


def test_matching_traffic_passes_the_check(home: Path) -> None:
    traffic(store_in(home), 200, at=START, version="2", correct=0.9)
    code, output = monitor("digits", "--windows", "3", "--check")
    assert code == 0, output
    assert "digits version 2" in output and "ALERT" not in output
    rows = [line for line in output.splitlines() if re.match(r"\d{4}-\d\d-\d\dT", line)]
    assert len(rows) == 3 and rows[-1].split()[1] == "200"


def test_drift_fails_the_check_with_one_line_per_alert(home: Path) -> None:
    store = store_in(home)
    traffic(store, 200, at=START, version="2", shift={"brightness": 0.2}, correct=0.6)
    traffic(store, 500, at=START, version="1", prefix="old")  # another version: left out
    code, output = monitor("digits", "--windows", "2", "--check")
    assert code == 1, output
    alerts = [line for line in output.splitlines() if line.startswith("ALERT ")]
    assert {line.split()[1].rstrip(":") for line in alerts} == {
        "input_drift.brightness", "accuracy_drop", "f1_drop"}
    code, _ = monitor("digits", "--windows", "2", "--check", "--psi", "5", "--accuracy-drop",
                      "0.5")
    assert code == 0
    code, _ = monitor("digits", "--check", "--min-predictions", "500")  # flag over automl.json
    assert code == 0


def test_json_holds_the_report_thresholds_and_alerts(home: Path) -> None:
    traffic(store_in(home), 60, at=START, version="2", classes=[0.0, 0.1, 0.9])
    code, output = monitor("digits", "--windows", "2", "--json", "--check")
    assert code == 1
    document = json.loads(output)
    assert document["thresholds"]["min_predictions"] == 40  # from automl.json
    assert document["report"]["version"] == "2"
    assert [w["predictions"] for w in document["report"]["windows"]] == [0, 60]
    assert [a["name"] for a in document["alerts"]] == ["class_drift"]


def test_database_option_and_environment(home: Path, tmp_path_factory: pytest.TempPathFactory,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path_factory.mktemp("other") / "monitor.db"
    traffic(MonitorStore(f"sqlite:///{other}"), 35, at=START, version="2")
    code, output = monitor("digits", "--windows", "1", "--database", f"sqlite:///{other}")
    assert code == 0 and "35" in output.splitlines()[-1]
    monkeypatch.setenv("AUTOML_DATABASE_URL", f"sqlite:///{other}")
    code, output = monitor("digits", "--windows", "1")
    assert code == 0 and "35" in output.splitlines()[-1]


def test_html_page_opens_offline_in_chromium(home: Path, tmp_path: Path) -> None:
    traffic(store_in(home), 120, at=START - HOUR, version="2", correct=0.8)
    traffic(store_in(home), 120, at=START, version="2", shift={"contrast": 0.1}, seed=2)
    page_file = tmp_path / "monitor.html"
    code, output = monitor("digits", "--windows", "4", "--html", str(page_file))
    assert code == 0, output
    text = page_file.read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text)
    opened = open_offline_page(page_file)
    images, body, requests = opened.images, opened.body, opened.requests
    assert [alt for alt, _, _ in images] == ["drift over time", "predictions and accuracy"]
    assert all(complete and width > 0 for _, complete, width in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert "input_drift.contrast" in body and "Windows" in body


@pytest.mark.parametrize(("args", "words"), [
    (["nothing"], "no model 'nothing'"),
    (["bare"], "no monitoring reference"),
    (["broken"], "not readable JSON"),
    (["digits", "--window", "soon"], "--window"),
    (["digits", "--psi", "0"], "psi threshold must be positive"),
    (["digits", "--database", "mysql://x/y"], "--database / AUTOML_DATABASE_URL"),
    (["digits", "--html", "/no/such/folder/page.html"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(home: Path, args: list[str], words: str) -> None:
    deploy(home / "models", "bare", 1, None)
    (deploy(home / "models", "broken", 1, None) / "reference.json").write_text("{")
    code, output = monitor(*args)
    assert code == 2, output
    assert words in output and len(output.strip().splitlines()) == 1, output


def test_unknown_model_in_another_repository(home: Path, tmp_path: Path) -> None:
    code, output = monitor("digits", "--repository", str(tmp_path / "elsewhere"))
    assert code == 2 and "no model 'digits'" in output
