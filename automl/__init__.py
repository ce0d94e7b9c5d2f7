"""automl: hyperparameter search for fine-tuning pretrained image classifiers.

The public face, for embedding jobs in your own code::

    from automl import Settings, load_spec, run_job
    spec = load_spec(Path("job.yaml"))
    outcome = run_job(spec, "my-job-1", Settings())

Each name is imported on first use (`automl --help` must not pay for torch and Ray). The
packages below are the architecture (see DESIGN.md): `search` (spec, space, strategy),
`tune` (the Ray Tune <-> Optuna bridge), `jobs` (one job end to end, and the runner),
`service` (REST API, client, dashboard) and `cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "JobSpec": "automl.search.spec",
    "load_spec": "automl.search.job_file",
    "parse_spec": "automl.search.spec",
    "SearchSpace": "automl.search.space",
    "Strategy": "automl.search.strategy",
    "run_job": "automl.jobs.driver",
    "JobOutcome": "automl.jobs.outcome",
    "Runner": "automl.jobs.runner",
    "JobService": "automl.service.service",
    "create_app": "automl.service.api",
    "Settings": "automl.settings",
    "UserError": "automl.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'automl' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
