"""The monitor: drift found where the traffic moved and not where it did not, scores from
feedback against the job's, thresholds from automl.json and flags."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from serving.monitor import (
    Thresholds,
    check,
    chi_square_p,
    feedback_scores,
    monitor_report,
    parse_window,
    psi,
)
from storage.monitoring import HOUR, Held, MonitorStore
from tests.serving.reference import T0, reference, traffic


@pytest.fixture
def store(tmp_path: Path) -> MonitorStore:
    return MonitorStore(f"sqlite:///{tmp_path / 'automl.db'}")


def iso(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def names(alerts: list) -> set[str]:  # type: ignore[type-arg]
    return {a.name for a in alerts}


def test_traffic_like_the_reference_raises_nothing(store: MonitorStore) -> None:
    traffic(store, 400, correct=0.9)
    report = monitor_report(store, "digits", reference(), windows=3, now=T0 + 10)
    assert [w["predictions"] for w in report["windows"]] == [0, 0, 400]
    latest = report["windows"][-1]
    assert latest["classes"]["psi"] < 0.05 and latest["confidence"]["psi"] < 0.05
    assert all(v["psi"] < 0.05 for v in latest["inputs"].values())
    assert abs(latest["confidence"]["mean"] - report["reference"]["mean_confidence"]) < 0.02
    assert check(report, Thresholds()) == []


def test_a_shifted_input_and_class_mix_are_drift(store: MonitorStore) -> None:
    traffic(store, 400, shift={"brightness": 0.15}, classes=[0.1, 0.2, 0.7],
            confidence=(0.55, 0.15))
    report = monitor_report(store, "digits", reference(), windows=1, now=T0 + 10)
    alerts = check(report, Thresholds())
    assert names(alerts) == {"class_drift", "confidence_drift", "input_drift.brightness"}
    brightness = next(a for a in alerts if a.name == "input_drift.brightness")
    assert brightness.value > 0.2 and brightness.threshold == 0.2
    assert brightness.window == iso(T0) and "\n" not in brightness.message


def test_few_predictions_are_reported_but_not_judged(store: MonitorStore) -> None:
    traffic(store, 20, shift={"brightness": 0.3})
    report = monitor_report(store, "digits", reference(), windows=1, now=T0 + 10)
    assert report["windows"][0]["inputs"]["brightness"]["psi"] > 1
    assert check(report, Thresholds()) == []
    assert names(check(report, Thresholds(min_predictions=10))) == {"input_drift.brightness"}


def test_noise_on_a_small_window_is_not_drift() -> None:
    """PSI on 30 draws from the reference itself often exceeds 0.2 over 10 bins; the
    chi-square test keeps that from alerting."""
    rng = np.random.default_rng(3)
    q = np.full(10, 0.1)
    noisy = alarms = 0
    for _ in range(300):
        counts = np.bincount(rng.integers(0, 10, 30), minlength=10)
        noisy += psi(counts, q) > 0.2
        alarms += psi(counts, q) > 0.2 and chi_square_p(counts, q) < 0.01
    assert noisy > 100 and alarms < 15  # the test is somewhat liberal at 3 expected a bin


def test_accuracy_from_feedback_against_the_test_score(store: MonitorStore) -> None:
    traffic(store, 300, correct=0.7, seed=5)
    traffic(store, 300, correct=0.92, seed=6, at=T0 + HOUR)
    report = monitor_report(store, "digits", reference(accuracy=0.9, f1=0.88), windows=2,
                            now=T0 + HOUR + 10)
    worse, fine = (w["feedback"] for w in report["windows"])
    assert worse["labeled"] == 300 and 0.63 < worse["accuracy"] < 0.77
    assert 0.88 < fine["accuracy"] < 0.96
    assert np.trace(np.array(worse["confusion"])) == round(worse["accuracy"] * 300)
    alerts = check(report, Thresholds())
    assert names(alerts) == {"accuracy_drop", "f1_drop"}
    assert {a.window for a in alerts} == {iso(T0)}
    assert check(report, Thresholds(accuracy_drop=0.3)) == []


def test_feedback_scores_match_scikit_learn() -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
    held = [Held(str(i), "1", int(p), 0.9, {}, 0.0, int(t))
            for i, (t, p) in enumerate(zip(true, predicted, strict=True))]
    held.append(Held("unlabeled", "1", 0, 0.9, {}, 0.0, None))
    scores = feedback_scores(held, 4)
    assert scores["labeled"] == 200
    assert scores["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert scores["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro"))
    assert scores["confusion"] == confusion_matrix(true, predicted, labels=range(4)).tolist()


def test_short_windows_read_the_sample(store: MonitorStore) -> None:
    traffic(store, 120)
    report = monitor_report(store, "digits", reference(), window="15m", windows=4,
                            now=T0 + HOUR - 1)
    assert [w["source"] for w in report["windows"]] == ["sample"] * 4
    assert [w["predictions"] for w in report["windows"]] == [30, 30, 30, 30]


def test_other_versions_are_left_out_when_asked(store: MonitorStore) -> None:
    traffic(store, 50, version="1")
    traffic(store, 70, version="2", seed=2)
    both = monitor_report(store, "digits", reference(), windows=1, now=T0)
    only = monitor_report(store, "digits", reference(), windows=1, now=T0, version="2")
    assert both["windows"][0]["predictions"] == 120 and only["windows"][0]["predictions"] == 70
    assert only["windows"][0]["sampled"] == 70


def test_a_reference_without_signatures_judges_the_rest(store: MonitorStore) -> None:
    traffic(store, 100, shift={"brightness": 0.3})
    report = monitor_report(store, "digits", reference(signature=False), windows=1, now=T0)
    assert "inputs" not in report["windows"][0] and check(report, Thresholds()) == []


def test_thresholds_come_from_defaults_then_automl_json_then_flags() -> None:
    assert Thresholds.resolve(None) == Thresholds()
    meta = {"monitor": {"psi": 0.3, "accuracy_drop": 0.1, "min_predictions": 100}}
    assert Thresholds.resolve(meta) == Thresholds(psi=0.3, accuracy_drop=0.1, min_predictions=100)
    assert Thresholds.resolve(meta, psi=0.5, accuracy_drop=None) == Thresholds(
        psi=0.5, accuracy_drop=0.1, min_predictions=100)
    with pytest.raises(ValueError, match="psi"):
        Thresholds.resolve({"monitor": {"psi": 0}})
    with pytest.raises(ValueError, match="accuracy_drop must be a number"):
        Thresholds.resolve({"monitor": {"accuracy_drop": "a lot"}})
    assert Thresholds.resolve({"monitor": {"psi": "0.3"}}).psi == 0.3


def test_windows_are_durations() -> None:
    assert [parse_window(w) for w in ("1h", "30m", "2d", "90s", 3600, "7200", "1w")] == [
        3600, 1800, 172800, 90, 3600, 7200, 604800]
    for bad in ("soon", "1y", "10s", "-1h"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_the_job_spec_monitor_section_is_what_automl_json_carries() -> None:
    from automl.errors import SpecError
    from automl.search.spec import parse_spec

    base = {"name": "m", "dataset": {"source": "builtin:digits"}}
    assert Thresholds.resolve({"monitor": parse_spec(base).monitor.model_dump()}) == Thresholds()
    spec = parse_spec({**base, "monitor": {"psi": 0.25, "min_predictions": 200}})
    meta = {"monitor": spec.monitor.model_dump()}  # what deploy writes into automl.json
    assert Thresholds.resolve(meta) == Thresholds(psi=0.25, min_predictions=200)
    for bad in ({"psi": 0}, {"accuracy_drop": 2}, {"min_predictions": 0}, {"window": "1h"}):
        with pytest.raises(SpecError, match="monitor"):
            parse_spec({**base, "monitor": bad})


def test_a_reference_with_other_confidence_bins_is_read_from_the_sample(
        store: MonitorStore) -> None:
    ref = reference()
    ref["confidence"] = {"edges": [0.0, 0.5, 0.8, 1.0], "test": [0.05, 0.25, 0.7]}
    traffic(store, 200, confidence=(0.9, 0.05))  # nearly all in the last bin
    entry = monitor_report(store, "digits", ref, windows=1, now=T0)["windows"][0]
    assert len(entry["confidence"]["histogram"]) == 3
    assert entry["confidence"]["histogram"][2] > 190 and entry["confidence"]["psi"] > 0.2
