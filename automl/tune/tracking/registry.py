"""A deployed model in the MLflow Model Registry: the ONNX file logged with `mlflow.onnx` (so
`mlflow models serve -m models:/NAME/V` and `mlflow.pyfunc.load_model` take it as it is), in a
run of the job's experiment, registered as the next version of NAME.

The run nests under the job's parent run and carries its own tags (`automl.deploy.job`,
`automl.deploy.trial`), not `runs.JOB_TAG`/`TRIAL_TAG`: those find a job's parent and trial runs
again, and a deploy run must not be taken for either.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from automl.errors import JobError
from automl.tune.tracking.failure import failure
from automl.tune.tracking.runs import JOB_TAG, PARENT_TAG, TRIAL_TAG, artifact_root

DEPLOY_JOB_TAG = "automl.deploy.job"
DEPLOY_TRIAL_TAG = "automl.deploy.trial"
DEPLOY_SOURCE_TAG = "automl.deploy.source"


def register(uri: str, experiment: str, name: str, onnx_file: Path, info: dict[str, Any],
             artifacts: list[Path]) -> int:
    """Log `onnx_file` as model `name`'s next registered version; returns its number.
    `info`: the version's automl.json (job, trial, source, test_metrics, ...)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return _register(mlflow, uri, experiment, name, onnx_file, info, artifacts)
    except (MlflowException, OSError) as error:
        raise JobError(
            f"cannot register {name} in the MLflow tracking store {uri}: {failure(uri, error)}; "
            "start the server, or fix tracking.mlflow in the job's spec (or AUTOML_MLFLOW_URI)"
        ) from None


def _register(mlflow: Any, uri: str, experiment: str, name: str, onnx_file: Path,
              info: dict[str, Any], artifacts: list[Path]) -> int:
    import numpy as np
    import onnx
    from mlflow import MlflowClient
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (found.experiment_id if found is not None else
                     client.create_experiment(experiment, artifact_location=artifact_root(uri)))
    job, trial, source = str(info["job"]), str(info.get("trial")), str(info["source"])
    tags = {DEPLOY_JOB_TAG: job, DEPLOY_TRIAL_TAG: trial, DEPLOY_SOURCE_TAG: source}
    parent = client.search_runs(
        [experiment_id], f"tags.`{JOB_TAG}` = '{job}'", max_results=1000)
    above = next((r.info.run_id for r in parent if TRIAL_TAG not in r.data.tags), None)
    if above is not None:
        tags[PARENT_TAG] = above
    model = onnx.load(str(onnx_file))
    inputs = info["inputs"]
    outputs = info["outputs"]
    numpy_type = {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32, "TYPE_INT64": np.int64,
                  "TYPE_INT8": np.int8, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32}
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(numpy_type[t["data_type"]]), (-1, *t["dims"]),
                                  t["name"]) for t in inputs]),
        outputs=Schema([TensorSpec(np.dtype(numpy_type[t["data_type"]]), (-1, *t["dims"]),
                                   t["name"]) for t in outputs]))
    metrics = {k: float(v) for k, v in (info.get("test_metrics") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    previous_tracking, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        run = client.create_run(experiment_id, run_name=f"deploy-{name}", tags=tags)
        with mlflow.start_run(run_id=run.info.run_id):
            mlflow.log_metrics(metrics)
            mlflow.log_params({"name": name, "source": source, "int8": info.get("int8")})
            mlflow.log_dict(info, "automl.json")
            for path in artifacts:
                mlflow.log_artifact(str(path))
            logged = mlflow.onnx.log_model(
                model, name="model", signature=signature, registered_model_name=name,
                save_as_external_data=False, tags=tags,
                metadata={"automl": json.dumps({k: info.get(k) for k in (
                    "job", "trial", "source", "classes", "preprocessing", "temperature")})})
    finally:
        mlflow.set_tracking_uri(previous_tracking)
        mlflow.set_registry_uri(previous_registry)
    version = int(logged.registered_model_version)
    client.update_model_version(
        name, str(version),
        description=(f"job {job} trial {trial} ({source} model){' int8' if info.get('int8') else ''}"
                     f", deployed {info.get('deployed_at')}; test: "
                     + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))))
    for key, value in {"job": job, "trial": trial, "source": source,
                       "int8": str(bool(info.get("int8")))}.items():
        client.set_model_version_tag(name, str(version), key, value)
    return version
