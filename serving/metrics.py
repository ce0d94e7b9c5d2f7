"""The server's Prometheus metrics, in a registry of its own per app (no global state: two apps
in one process, as in the tests, count apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("automl_requests", "HTTP requests answered",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("automl_request_seconds", "time to answer a request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter("automl_errors", "requests answered with an error",
                              ["route", "kind"], registry=registry)
        self.batch_size = Histogram("automl_batch_size", "rows in each batch run",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.predictions = Counter("automl_predictions", "predictions by class",
                                   ["model", "label"], registry=registry)
        self.queue_depth = Gauge("automl_queue_depth", "requests waiting for a batch",
                                 registry=registry)
        self.dropped = Counter("automl_monitoring_dropped",
                               "served rows not recorded (the recording queue was full)",
                               registry=registry)
        self.record_failures = Counter("automl_monitoring_failures",
                                       "recorder calls that failed", registry=registry)
        self.alert = Gauge("automl_monitor_alert", "1 while the monitor's check fires",
                           ["model", "check"], registry=registry)

    def set_alert(self, check: str, firing: bool) -> None:
        self.alert.labels(self.model, check).set(1.0 if firing else 0.0)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, "server" if status >= 500 else "client").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
