"""Run a digits job on a real 2-node Ray cluster on this machine; print where trials ran.

A script, not a test module: the 2-node cluster needs its own driver process, apart from the
test session's local Ray. tests/tune/test_cluster.py runs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.tune import ExperimentAnalysis

from automl.jobs.driver import run_job
from automl.search.spec import parse_spec
from automl.settings import Settings


def main(home: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # head runs no trial
    workers = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    spec = parse_spec({
        "name": "two-nodes",
        "dataset": {"source": "builtin:digits"},
        "budget": {"n_trials": 4, "max_epochs": 2},
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1},
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
    }))
    ray.shutdown()  # the driver first: the cluster refuses to remove a node it is attached to
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
