"""Distillation and int8: does a small student taught by a big teacher beat the same student
trained alone, and what does int8 then cost and save?

One teacher, then for each student size: the student alone, the student distilled from the
teacher (the same schedule, seed and compute), and the distilled student as int8 ONNX. Every
model is scored on the test split, which no choice here was made on; latency is onnxruntime's on
one CPU thread at batch 1 (the default deployment target). The teacher is trained from scratch
(nothing is downloaded) on digits with the hardest policy the engine has (RandAugment), which
keeps small students short of the teacher; at 32 px and basic augmentation every model
saturates and there is no gap to close.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.config import TrialConfig
from workers.export import export_onnx
from workers.predict import evaluate_checkpoint, load_checkpoint
from workers.quantize import quantize_model


@dataclass(frozen=True)
class Row:
    model: str
    params_m: float
    test_accuracy: float
    latency_ms: float
    int8_accuracy: float | None = None
    int8_latency_ms: float | None = None


def run(teacher: str, students: list[str], epochs: int, img_size: int, student_size: int,
        seed: int = 0) -> list[Row]:
    base: dict[str, Any] = {"augment": "randaugment", "lr": 3e-3, "batch_size": 64,
                            "epochs": epochs, "seed": seed, "warmup_epochs": min(1, epochs - 1)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="automl-bench-distill-") as folder:
        work = Path(folder)
        taught = _train({**base, "backbone": teacher, "img_size": img_size}, work / "teacher")
        rows.append(_row(f"teacher {teacher} @{img_size}px", taught, work, int8=False))
        for student in students:
            config = {**base, "backbone": student, "img_size": student_size}
            alone = _train(config, work / f"{student}-alone")
            rows.append(_row(f"{student} @{student_size}px alone", alone, work, int8=False))
            distilled = _train({**config, "teacher": str(taught), "distill_alpha": 0.7,
                                "distill_temperature": 4.0}, work / f"{student}-distilled")
            rows.append(_row(f"{student} @{student_size}px distilled", distilled, work, int8=True))
    return rows


def _train(config: dict[str, Any], workdir: Path) -> Path:
    from workers.train.loop import train

    best = train(TrialConfig.from_dict(config), workdir).best_checkpoint
    assert best is not None
    return best


def _row(name: str, checkpoint: Path, work: Path, int8: bool) -> Row:
    loaded = load_checkpoint(checkpoint, torch.device("cpu"))
    accuracy = evaluate_checkpoint(loaded)["test_accuracy"]
    params = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    exported = export_onnx(checkpoint, work / f"{checkpoint.parent.name}.onnx")
    if not int8:
        return Row(name, params, accuracy, exported.latency_ms)
    quantized = quantize_model(loaded, exported.path, exported.path.with_suffix(".int8.onnx"),
                               exported.target, max_drop=0.99)
    return Row(name, params, accuracy, exported.latency_ms, quantized.int8.accuracy,
               quantized.int8.latency_ms)


def gap_closed(rows: list[Row], student: str) -> float | None:
    """(distilled - alone) / (teacher - alone): 1 closes the whole gap."""
    teacher = rows[0].test_accuracy
    alone = next(r.test_accuracy for r in rows if r.model.startswith(student) and "alone" in r.model)
    distilled = next(r.test_accuracy for r in rows
                     if r.model.startswith(student) and "distilled" in r.model)
    return None if teacher <= alone else (distilled - alone) / (teacher - alone)
