"""A real small job (builtin:digits, 2 trials, local Ray) that counts, in every process of it
(the driver and each Ray worker), the real calls of the functions given on the command line.

Run by tests/workers/data/test_computed_once.py as its own process: the counters must be in
place in Ray's workers from their start, so this script starts its own local Ray with a worker
setup hook. Each call appends `name pid` to the file named by argv[1]; the job's outcome is
printed as JSON.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

COUNTS = Path(sys.argv[1])
COUNTED = [name.rpartition(".") for name in sys.argv[3:]]  # "module.function"


def count_calls() -> None:
    """Wrap each counted function where it is defined, before anything imports it by name."""
    for module_name, _, name in COUNTED:
        module = importlib.import_module(module_name)
        real = getattr(module, name)

        @functools.wraps(real)
        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            with COUNTS.open("a") as out:
                out.write(f"{_name} {os.getpid()}\n")
            return _real(*args, **kwargs)

        setattr(module, name, counted)


def main() -> None:
    import ray

    count_calls()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": count_calls})
    from automl.jobs.driver import run_job
    from automl.search.spec import parse_spec
    from automl.settings import Settings
    from tests.support import DIGITS_JOB

    spec = parse_spec({**DIGITS_JOB, "budget": {"n_trials": 2, "max_epochs": 1}})
    outcome = run_job(spec, "counted", Settings(home=Path(sys.argv[2])))
    print(json.dumps({"state": outcome.state, "driver": os.getpid()}))


if __name__ == "__main__":
    main()
