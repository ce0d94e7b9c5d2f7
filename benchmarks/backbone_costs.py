"""The deployment costs of the replay data's backbones, measured once by the code jobs use.

A Pareto-front replay needs each recorded run's cost on the deployment target, which the recorded
data does not hold. They depend on the backbone and input size only (`workers/model/costs.py`), and
the replay's space leaves the input size at each backbone's own, so one row per backbone does.
`automl-bench backbone-costs` measures them (`measure_costs`, the job's default latency target:
onnxruntime on one CPU thread, batch 1) and writes `backbone_costs.json` beside this file, which
the replay reads; the machine that measured it is named in the file.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("backbone_costs.json")
NUM_CLASSES = 45  # the replay datasets' median class count: the head is a rounding error anyway


def measure(backbones: Sequence[str], warmup: int = 1, runs: int = 5,
            progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """{backbone: {params_m, macs_g, latency_ms, img_size}} on this machine's CPU, one thread."""
    from workers.config import TrialConfig
    from workers.model.backbone import create_backbone
    from workers.model.costs import model_latency, static_costs
    from workers.model.target import LatencyTarget

    target = LatencyTarget()
    rows: dict[str, Any] = {}
    for backbone in backbones:
        params_m, macs_g, side = static_costs(backbone, None, NUM_CLASSES)
        model = create_backbone(TrialConfig(backbone=backbone, pretrained=False), NUM_CLASSES)
        latency = model_latency(model.eval(), side, target, warmup=warmup, runs=runs)
        rows[backbone] = {"params_m": round(params_m, 3), "macs_g": round(macs_g, 3),
                          "latency_ms": round(latency, 1), "img_size": side}
        del model
        if progress:
            progress(backbone, rows[backbone])
    return {"target": target.key(), "num_classes": NUM_CLASSES, "runs": runs,
            "machine": f"{_cpu_name()} ({platform.machine()})", "backbones": rows}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def write(table: dict[str, Any], path: Path = TABLE) -> None:
    path.write_text(json.dumps(table, indent=1) + "\n")


def load(path: Path = TABLE) -> dict[str, dict[str, float]]:
    """{backbone: {params_m, macs_g, latency_ms, img_size}} as committed."""
    rows: dict[str, dict[str, float]] = json.loads(path.read_text())["backbones"]
    return rows
