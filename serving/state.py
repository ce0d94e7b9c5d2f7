"""What the routes share: the model, its batcher, the metrics and the recording queue."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from serving.batching import Batcher
from serving.metrics import Metrics
from serving.model import ServedModel
from serving.recording import RecordingQueue
from serving.watch import Watch


@dataclass
class Server:
    model: ServedModel
    name: str
    version: str
    batcher: Batcher
    metrics: Metrics
    recording: RecordingQueue | None
    max_files: int
    watch: Watch | None = None
    ready: bool = False

    @property
    def serving(self) -> bool:
        """Ready for requests: started, not stopping, its batcher alive."""
        return self.ready and self.batcher.running

    def set_alert(self, check: str, firing: bool) -> None:
        """The monitor's verdict on `check`, as the `automl_monitor_alert` gauge."""
        self.metrics.set_alert(check, firing)


def server(request: Request) -> Server:
    found: Server = request.app.state.server
    return found
