"""What a configuration's costs are called and where latency is measured: the names a job spec,
the bridge and a trial share. Torch-free, so that reading a spec (`automl submit`, the API) does
not import torch and timm; measuring them is `workers.model.costs`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

COSTS = ("params_m", "macs_g", "latency_ms")  # what a limit or a Pareto front may name
COSTS_REQUEST = "measure_costs"  # the trial config's entry asking the trial for its costs
COSTS_RESULT = "costs_of"  # the first result of such a trial: its costs, under its cost key


@dataclass(frozen=True)
class LatencyTarget:
    """Where the model will serve: what its latency is measured on."""

    device: Literal["cpu", "cuda"] = "cpu"
    batch: int = 1
    threads: int = 1
    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"

    def key(self) -> str:
        return f"{self.device}-b{self.batch}-t{self.threads}-{self.runtime}"


@dataclass(frozen=True)
class Costs:
    params_m: float
    macs_g: float
    latency_ms: float | None = None  # None: not measured (no limit or front asks for it)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def get(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value


def broken_limits(costs: Mapping[str, float | None], limits: Mapping[str, float]) -> dict[str, list[float]]:
    """The limits `costs` break: {cost: [value, limit]}."""
    return {name: [float(value), limit] for name, limit in limits.items()
            if (value := costs.get(name)) is not None and value > limit}
