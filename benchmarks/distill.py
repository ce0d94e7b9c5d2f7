"""Distillation and int8: does a small student taught by a big teacher beat the same student
trained alone, which way of teaching pays, and what does int8 then cost and save?

One teacher, then for each student size: the student alone, the student distilled from the
teacher in both `distill_targets` modes (the same schedule, seed and compute: "consistent", the
teacher run on every augmented student batch, and "cached", its logits computed once per training
image before the first epoch), and the better distilled student (by validation accuracy, so the
test split chooses nothing) as int8 ONNX. Every model is scored on the test split; latency is
onnxruntime's on one CPU thread at batch 1 (the default deployment target). Each distilled row
states what the teacher cost that student trial: its forward passes and their seconds, beside the
trial's own training seconds. The teacher is trained from scratch (nothing is downloaded) on
digits with the hardest policy the engine has (RandAugment), at a larger input than the students'
(32 px against 16), which keeps small students short of the teacher; at 32 px and basic
augmentation every model saturates and there is no gap to close.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.config import TrialConfig
from workers.export import export_onnx
from workers.model.target import LatencyTarget
from workers.predict import evaluate_checkpoint, load_checkpoint
from workers.quantize import quantize_model

MODES = ("consistent", "cached")


@dataclass(frozen=True)
class Row:
    model: str
    student: str  # the backbone ("" for the teacher)
    kind: str  # "teacher", "alone", a distill_targets mode, or "int8"
    params_m: float
    test_accuracy: float
    latency_ms: float
    val_accuracy: float | None = None
    train_seconds: float | None = None  # the trial's epochs, teacher passes included
    teacher_forwards: int | None = None  # per student trial
    teacher_seconds: float | None = None
    speedup: float | None = None  # int8: over the float model it came from, as quantize measured
    drop: float | None = None  # int8: test accuracy lost against that float model (its ONNX file)


def run(teacher: str, students: list[str], epochs: int, img_size: int, student_size: int,
        seed: int = 0) -> list[Row]:
    base: dict[str, Any] = {"augment": "randaugment", "lr": 3e-3, "batch_size": 64,
                            "epochs": epochs, "seed": seed, "warmup_epochs": min(1, epochs - 1)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="automl-bench-distill-") as folder:
        work = Path(folder)
        taught, history = _train({**base, "backbone": teacher, "img_size": img_size},
                                 work / "teacher")
        rows.append(_row(f"teacher {teacher} @{img_size}px", "", "teacher", taught, history,
                         work))
        for student in students:
            config = {**base, "backbone": student, "img_size": student_size}
            alone, history = _train(config, work / f"{student}-alone")
            rows.append(_row(f"{student} @{student_size}px alone", student, "alone", alone,
                             history, work))
            distilled = {}
            for mode in MODES:
                checkpoint, history = _train(
                    {**config, "teacher": str(taught), "distill_alpha": 0.7,
                     "distill_temperature": 4.0, "distill_targets": mode},
                    work / f"{student}-{mode}")
                distilled[mode] = checkpoint
                rows.append(_row(f"{student} @{student_size}px distilled, {mode}", student, mode,
                                 checkpoint, history, work))
            better = max((r for r in rows if r.student == student and r.kind in MODES),
                         key=lambda r: (r.val_accuracy or 0.0, r.kind == "cached"))
            rows.append(_int8(f"{student} @{student_size}px distilled, {better.kind}, int8",
                              student, distilled[better.kind], better, work))
    return rows


def _train(config: dict[str, Any], workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    from workers.train.loop import train

    summary = train(TrialConfig.from_dict(config), workdir)
    if summary.best_checkpoint is None:
        raise RuntimeError(f"{workdir.name}: the trial kept no checkpoint")
    return summary.best_checkpoint, summary.history


def _row(name: str, student: str, kind: str, checkpoint: Path, history: list[dict[str, Any]],
         work: Path) -> Row:
    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    exported = export_onnx(checkpoint, work / f"{checkpoint.parent.name}.onnx")
    last = history[-1]
    return Row(
        name, student, kind, sum(p.numel() for p in loaded.model.parameters()) / 1e6,
        evaluate_checkpoint(loaded)["test_accuracy"], exported.latency_ms,
        val_accuracy=max(float(h["val_accuracy"]) for h in history),
        train_seconds=sum(float(h["epoch_seconds"]) for h in history),
        teacher_forwards=last.get("teacher_forwards"), teacher_seconds=last.get("teacher_seconds"),
    )


def _int8(name: str, student: str, checkpoint: Path, fp32: Row, work: Path) -> Row:
    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    exported = work / f"{checkpoint.parent.name}.onnx"  # written by `_row`
    quantized = quantize_model(loaded, exported, exported.with_suffix(".int8.onnx"),
                               LatencyTarget(), max_drop=0.99)  # kept whatever it loses
    return Row(name, student, "int8", fp32.params_m, quantized.int8.accuracy,
               quantized.int8.latency_ms, speedup=quantized.speedup, drop=quantized.drop)


def gap_closed(rows: list[Row], student: str, mode: str) -> float | None:
    """(distilled - alone) / (teacher - alone): 1 closes the whole gap; None when there is none."""
    teacher = next(r.test_accuracy for r in rows if r.kind == "teacher")
    alone = next(r.test_accuracy for r in rows if r.student == student and r.kind == "alone")
    distilled = next(r.test_accuracy for r in rows if r.student == student and r.kind == mode)
    return None if teacher <= alone else (distilled - alone) / (teacher - alone)
