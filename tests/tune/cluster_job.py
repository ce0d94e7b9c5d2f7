"""Run a digits job on a real 2-node Ray cluster on this machine; print where trials ran.

A script, not a test module: the 2-node cluster needs its own driver process, apart from the
test session's local Ray. tests/tune/test_cluster.py runs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster
from ray.tune import ExperimentAnalysis

from automl.jobs.driver import run_job
from automl.search.spec import parse_spec
from automl.settings import Settings


def main(home: Path, data_parallel: bool = False) -> None:
    """`data_parallel`: one trial, a group of two workers of 0.9 CPU, which only both nodes
    together hold (gloo between the nodes)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # head runs no trial
    workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    spec = parse_spec({
        "name": "two-nodes",
        "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": 1 if data_parallel else 4, "max_epochs": 2},
        "max_concurrent_trials": 1 if data_parallel else 2,
        "resources": {"workers": 2, "cpu": 0.9} if data_parallel else {"cpu": 1},
        "strategy": {"seed": 0, "pruner": "none"},
        "evaluation": {"corruptions": False},
        "space": {"backbone": "test_resnet.r160_in1k", "pretrained": False, "img_size": 32,
                  "augment": "none", "batch_size": 64, "freeze_stages": 0},
    })
    settings = Settings(home=home, ray_address=cluster.address)
    outcome = run_job(spec, "two-nodes", settings)
    trials = ExperimentAnalysis(str(settings.runs_path / "two-nodes")).trials
    print(json.dumps({
        "state": outcome.state,
        "error": outcome.error,
        "worker_nodes": sorted(node.node_id for node in workers),
        "trial_nodes": sorted(t.last_result.get("node_id", "") for t in trials),
        "complete": outcome.counts.complete,
        "epochs": [sorted(t.intermediate_values) for t in outcome_study(settings).trials],
    }))
    ray.shutdown()  # the driver first: the cluster refuses to remove a node it is attached to
    cluster.shutdown()


def outcome_study(settings: Settings) -> Any:
    import optuna

    from storage.optuna_storage import optuna_storage

    return optuna.load_study(study_name="two-nodes", storage=optuna_storage(settings.storage_url))


if __name__ == "__main__":
    main(Path(sys.argv[1]), data_parallel="--data-parallel" in sys.argv[2:])
