"""The model server's own monitor: the report `automl monitor` prints, served as
`GET /models/{name}/monitor`, and its alerts kept current as the `automl_monitor_alert` gauge
(one series per check, 1 while it fires) that Prometheus' alert rules read.

A thread refreshes the gauge every `interval` seconds from the window now filling (the same
store, reference and thresholds as `automl monitor`); a refresh that fails is logged and the
gauge keeps its last values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from serving.monitor import MonitorSource, Thresholds, check, monitor_report

log = logging.getLogger(__name__)

FIXED_CHECKS = ("class_drift", "confidence_drift", "accuracy_drop", "f1_drop")


@dataclass
class Watch:
    source: MonitorSource
    name: str  # the served name: what the server records under
    version: str
    reference: dict[str, Any]  # the version's reference.json
    thresholds: Thresholds
    interval: float = 60.0
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def checks(self) -> list[str]:
        """Every check the gauge has a series for (input drift: each feature referenced)."""
        features = sorted(self.reference.get("signature") or {})
        return [*FIXED_CHECKS, *(f"input_drift.{f}" for f in features)]

    def document(self, window: str | float = "1h", windows: int = 24) -> dict[str, Any]:
        """The report, the thresholds and the alerts: `automl monitor --json`'s document."""
        report = monitor_report(self.source, self.name, self.reference, window=window,
                                windows=windows, version=self.version)
        return {"report": report, "thresholds": asdict(self.thresholds),
                "alerts": [asdict(a) for a in check(report, self.thresholds)]}

    def refresh(self, set_alert: Callable[[str, bool], None]) -> list[str]:
        """Judge the window now filling; set every check's series. Returns those firing."""
        alerts = self.document(windows=1)["alerts"]
        firing = {a["name"] for a in alerts}
        for name in sorted(set(self.checks()) | firing):
            set_alert(name, name in firing)
        return sorted(firing)

    def start(self, set_alert: Callable[[str, bool], None]) -> None:
        for name in self.checks():
            set_alert(name, False)

        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.refresh(set_alert)
                except Exception:  # the server serves on; the gauge keeps its last values
                    log.exception("model %s: the monitor's check failed", self.name)

        self._thread = threading.Thread(target=loop, name=f"monitor-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
