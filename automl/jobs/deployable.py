"""The deployable model: the distill stage's student, with its int8 form when that passes, and a
card that sets it beside the teacher and the student alone.

It is the distill stage's own publication (study `JOB-distill`), published again with
`model.onnx`, `model.int8.onnx` (only when int8 lost at most `quantize.max_drop` of test
accuracy) and the comparison, all or nothing as any publication; the job's study then points at
it (`keys.DEPLOYABLE`), which is what `automl pull --deployable` follows. A quantization that no
runtime can do for the student leaves the float student deployable, and says why on the card.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from optuna_dashboard import save_note

from automl.jobs.distill import Student, stage_id
from automl.jobs.outcome import JobOutcome, score_on_test
from automl.jobs.publish import publish
from automl.jobs.pull import kept_checkpoint_of, pull
from automl.search import keys
from automl.search.spec import JobSpec
from automl.settings import Settings
from storage.jobs import JobStore, Lease
from storage.optuna_storage import optuna_storage, retry
from workers.data.index import DatasetIndex
from workers.export import export_onnx
from workers.predict import load_checkpoint
from workers.quantize import QuantizeError, quantize_model

log = logging.getLogger(__name__)

ROWS = ("teacher", "student alone", "distilled student", "int8 student")


def publish_deployable(spec: JobSpec, job_id: str, settings: Settings, study: optuna.Study,
                       stage: JobOutcome, student: Student, index: DatasetIndex | None,
                       lease: Lease | None = None) -> dict[str, Any]:
    """Export and quantize the stage's published student, compare, publish; returns the
    comparison the job's study records (`keys.DEPLOYABLE`)."""
    storage = optuna_storage(settings.storage_url)
    name = stage_id(job_id)
    stage_study = optuna.load_study(study_name=name, storage=storage)
    with tempfile.TemporaryDirectory(prefix="automl-deployable-") as tmp:
        folder = pull(storage, settings.artifacts_path, name, Path(tmp) / "model")
        exported = export_onnx(folder, folder / "model.onnx")
        int8 = _int8(spec, folder, exported)
        rows = [_row(study, study.user_attrs.get(keys.BEST_TRIAL), "teacher",
                     study.user_attrs.get(keys.TEST_METRICS, {})),
                _alone(spec, settings, job_id, student, index),
                _row(stage_study, stage.best_trial, "distilled student", stage.test_metrics,
                     latency_ms=int8.get("fp32", {}).get("latency_ms", exported.latency_ms)),
                _int8_row(int8, stage_study, stage.best_trial)]
        summary = {"study": name, "trial": stage.best_trial, "limits": spec.distill_limits(),
                   "target": exported.target.key(), "rows": rows, "int8": int8}
        body = comparison_section(summary)
        _add_to_card(folder / "README.md", body)
        record = {keys.DEPLOYABLE: summary, keys.BEST_TRIAL: stage.best_trial,
                  keys.TEST_METRICS: stage_study.user_attrs.get(keys.TEST_METRICS, {})}
        if lease is None:
            publish(stage_study, settings.artifacts_path, folder, record)
        else:
            jobs = JobStore(settings.storage_url)
            publish(stage_study, settings.artifacts_path, folder, record,
                    lambda: jobs.fenced(lease))
        card = (folder / "README.md").read_text()
    retry(lambda: save_note(stage_study, card.split("\n---\n", 1)[-1]),
          what="write the deployable model's card note")
    retry(lambda: study.set_user_attr(keys.DEPLOYABLE, summary), what="record the deployable")
    return summary


def _int8(spec: JobSpec, folder: Path, exported: Any) -> dict[str, Any]:
    """int8 beside the float file when it passes; what was measured, either way."""
    q = spec.quantize
    if not q.int8:
        return {"asked": False}
    loaded = load_checkpoint(folder, torch.device("cpu"))
    try:
        done = quantize_model(loaded, exported.path, folder / "model.int8.onnx", exported.target,
                              q.calibration, q.max_drop)
    except QuantizeError as error:
        return {"asked": True, "kept": False, "error": str(error)}
    # an int8 file no faster than the float one on the target is no deployment gain
    faster = done.speedup > 1
    if done.kept and not faster:
        done.path.unlink(missing_ok=True)
    return {"asked": True, "kept": done.kept and faster, "faster": faster,
            "max_drop": q.max_drop,
            "drop": round(done.drop, 4), "speedup": round(done.speedup, 3),
            "fp32": {"test_accuracy": done.fp32.accuracy, "latency_ms": done.fp32.latency_ms,
                     "size_mb": round(done.fp32.size_bytes / 1e6, 3)},
            "int8": {"test_accuracy": done.int8.accuracy, "latency_ms": done.int8.latency_ms,
                     "size_mb": round(done.int8.size_bytes / 1e6, 3)},
            "calibration_images": done.calibration_images, "test_images": done.test_images}


def _trial(study: optuna.Study, number: int | None) -> FrozenTrial | None:
    if number is None:
        return None
    trials = retry(lambda: study.get_trials(deepcopy=False), what="list trials")
    return next((t for t in trials if t.number == number), None)


def _row(study: optuna.Study, number: int | None, model: str, test: dict[str, Any],
         **measured: float) -> dict[str, Any]:
    trial = _trial(study, number)
    config = trial.user_attrs.get(keys.CONFIG, {}) if trial else {}
    costs = trial.user_attrs.get(keys.COSTS) or {} if trial else {}
    return {"model": model, "study": study.study_name, "trial": number,
            "backbone": config.get("backbone"), "img_size": config.get("img_size"),
            "val": float(trial.values[0]) if trial and trial.values else None,
            "test_accuracy": test.get("test_accuracy"),
            **{k: costs.get(k) for k in ("params_m", "macs_g", "latency_ms")}, **measured}


def _alone(spec: JobSpec, settings: Settings, job_id: str, student: Student,
           index: DatasetIndex | None) -> dict[str, Any]:
    """The best search trial that fits, scored on the test split here (its checkpoint is kept
    for this: `automl.tune.retention.Keepers`); none when no search trial fits."""
    alone = student.alone
    if alone is None:
        return {"model": "student alone", "trial": None}
    from ray import tune

    kept = kept_checkpoint_of(settings.runs_path / job_id,
                              str(alone.user_attrs.get(keys.RAY_TRIAL_ID)))
    test = {} if kept is None else score_on_test(tune.Checkpoint(str(kept)), spec, index)
    costs = alone.user_attrs.get(keys.COSTS) or {}
    config = alone.user_attrs.get(keys.CONFIG, {})
    return {"model": "student alone", "study": job_id, "trial": alone.number,
            "backbone": config.get("backbone"), "img_size": config.get("img_size"),
            "val": float(alone.values[0]) if alone.values else None,
            "test_accuracy": test.get("test_accuracy"),
            **{k: costs.get(k) for k in ("params_m", "macs_g", "latency_ms")}}


def _int8_row(int8: dict[str, Any], stage_study: optuna.Study,
              number: int | None) -> dict[str, Any]:
    if not int8.get("kept"):
        return {"model": "int8 student", "trial": None}
    distilled = _row(stage_study, number, "int8 student", {})
    return {**distilled, "val": None, "test_accuracy": int8["int8"]["test_accuracy"],
            "latency_ms": int8["int8"]["latency_ms"]}


def comparison_section(summary: dict[str, Any]) -> str:
    """The card's comparison: the four models side by side, and what happened to int8."""

    def cell(value: Any, digits: str = ".4f") -> str:
        return "-" if value is None else format(value, digits) if isinstance(value, float) \
            else str(value)

    limits = ", ".join(f"{k} <= {v:g}" for k, v in summary["limits"].items()) or "none"
    lines = [
        "## Deployable model: the distilled student",
        "",
        f"Student limits: {limits}; latency on {summary['target']}.",
        "",
        "| model | trial | backbone | img | val | test accuracy | params M | MACs G | latency ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary["rows"]:
        where = "-" if row.get("trial") is None else f"{row.get('study')}#{row['trial']}"
        lines.append(
            f"| {row['model']} | {where} | {cell(row.get('backbone'))} | "
            f"{cell(row.get('img_size'))} | {cell(row.get('val'))} | "
            f"{cell(row.get('test_accuracy'))} | {cell(row.get('params_m'), '.3g')} | "
            f"{cell(row.get('macs_g'), '.3g')} | {cell(row.get('latency_ms'), '.3g')} |")
    teacher, alone = summary["rows"][0], summary["rows"][1]
    if alone.get("trial") is not None and alone["trial"] == teacher["trial"]:
        lines += ["", "The search's best model already fits the limits: the student is its own "
                  "architecture, taught by it (born-again distillation)."]
    lines += ["", int8_verdict(summary["int8"]), ""]
    return "\n".join(lines)


def int8_verdict(int8: dict[str, Any]) -> str:
    """One line: what happened to the int8 form."""
    if not int8.get("asked"):
        return "int8: not asked (quantize.int8: false)."
    if "error" in int8:
        return f"int8: not made: {int8['error']}"
    said = (f"{int8['speedup']:.2f}x the speed of fp32, {100 * int8['drop']:+.2f} points of test "
            f"accuracy lost on {int8['test_images']} images (calibrated on "
            f"{int8['calibration_images']} training images)")
    if int8["kept"]:
        return f"int8: model.int8.onnx, {said}."
    why = (f"more than quantize.max_drop {int8['max_drop']:g}"
           if int8["drop"] > int8["max_drop"] else "no faster than fp32 on the target")
    return f"int8: not published: {said}, {why}; the float model.onnx is the deployable one."


def _add_to_card(card: Path, section: str) -> None:
    """The comparison first in the card's text, after its Hub front matter."""
    text = card.read_text()
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        head, rest = text[4:].split("\n---\n", 1)
        card.write_text(f"---\n{head}\n---\n\n{section}\n{rest.lstrip()}")
    else:
        card.write_text(f"{section}\n{text}")
