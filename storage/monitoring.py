"""What a model server records for monitoring, and the store that keeps it bounded.

The shapes are declared here once: the server (`serving.app`) hands `Served` rows to a
`Recorder` and forwards feedback; `automl monitor` reads them back. The SQL store (PostgreSQL
deployed, SQLite embedded) keeps a bounded sample of predictions and per-window rollups, never an
unbounded log of every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Served:
    """One prediction the server answered."""

    prediction_id: str  # what the client sends back with POST /feedback
    model: str  # the served name
    version: str  # the model repository version
    label: int  # the predicted class index
    confidence: float  # its probability (at the model's temperature)
    signature: dict[str, float]  # serving.signature.signature(...)
    at: float  # unix time


class UnknownPrediction(LookupError):
    """Feedback for a prediction id the store does not hold (never served, or aged out)."""


class Recorder(Protocol):
    """Where the server puts what it served and the feedback it receives. `record` is called
    once per formed batch, off the request path; `feedback` raises `UnknownPrediction`."""

    def record(self, served: list[Served]) -> None: ...

    def feedback(self, model: str, prediction_id: str, label: int) -> None: ...

    def close(self) -> None: ...
