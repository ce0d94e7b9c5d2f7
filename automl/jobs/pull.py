"""Pulling a job's published model: the files its publication's manifest names, each checked.

Pull takes the manifest's files (`keys.PUBLISHED_FILES`: each file's id, size and sha256) by
id, never by name among whatever the study holds: anyone with the dashboard can upload a file
of any name to a study. Whatever lands in the output folder lands all at once, or not at all.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound

from automl.errors import PullError
from automl.jobs.publish import write_model_folder
from automl.search import keys
from automl.search.keys import TrialCounts
from storage.artifacts import ArtifactStore, Digest, artifact_store, get, where

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json")  # and automl.json, or metrics.json (v1)


def published_study(storage: optuna.storages.BaseStorage, job_id: str) -> optuna.Study:
    try:
        study = optuna.load_study(study_name=job_id, storage=storage)
    except KeyError:
        raise PullError(
            f"unknown job id {job_id!r}: no study of that name in this storage; "
            "list jobs with `automl list`, or pass the right --storage"
        ) from None
    number = study.user_attrs.get(keys.BEST_TRIAL)
    if number is None:
        raise PullError(
            f"job {job_id!r} has no published best checkpoint yet (still running, or it failed); "
            "check it with `automl status`"
        )
    return study


def pull(
    storage: optuna.storages.BaseStorage, artifacts: str, job_id: str, out: Path
) -> Path:
    """Write the published files (the manifest's, each checked) into `out`; all or none."""
    study = published_study(storage, job_id)
    store = artifact_store(artifacts, create=False)  # a wrong path must not become a store
    files: dict[str, dict[str, Any]] | None = study.user_attrs.get(keys.PUBLISHED_FILES)
    if files is None:
        return _pull_unchecked(study, store, artifacts, out)

    def fill(staging: Path) -> None:
        for name, published in sorted(files.items()):
            _get_checked(store, artifacts, job_id, name, published, staging / name)

    return _all_or_nothing(out, fill)


# the study's test scores (`keys.TEST_METRICS`) under the names of an evaluation report's scores
TEST_METRIC_NAMES = {"test_accuracy": "accuracy", "test_precision": "precision_macro",
                     "test_recall": "recall_macro", "test_f1": "f1_macro",
                     "test_auroc": "auroc_macro", "test_loss": "nll", "test_ece": "ece"}


def published_evaluation(
    storage: optuna.storages.BaseStorage, artifacts: str, job_id: str
) -> dict[str, Any]:
    """The published model's scores on the job's test split: from the publication's
    `evaluation.json` (an `automl evaluate` report, with its bootstrap intervals) when it has
    one, else the study's test scores (a job published before: no intervals). Returns
    {"job", "source", "images", "metrics", "confidence_intervals" (None without)}."""
    study = published_study(storage, job_id)
    files: dict[str, dict[str, Any]] = study.user_attrs.get(keys.PUBLISHED_FILES) or {}
    if "evaluation.json" in files:
        store = artifact_store(artifacts, create=False)
        with tempfile.TemporaryDirectory(prefix="automl-against-") as tmp:
            path = Path(tmp) / "evaluation.json"
            _get_checked(store, artifacts, job_id, "evaluation.json", files["evaluation.json"],
                         path)
            report = json.loads(path.read_text())
        return {"job": job_id, "source": "evaluation.json", "images": report.get("images"),
                "metrics": {**report["metrics"], "ece": report["calibration"]["ece"]},
                "confidence_intervals": report.get("confidence_intervals")}
    test = study.user_attrs.get(keys.TEST_METRICS) or {}
    scores = {TEST_METRIC_NAMES[k]: float(v) for k, v in test.items()
              if k in TEST_METRIC_NAMES and isinstance(v, int | float)}
    if not scores:
        raise PullError(f"job {job_id!r} published no test scores to compare with")
    return {"job": job_id, "source": "test_metrics", "images": test.get("test_images"),
            "metrics": scores, "confidence_intervals": None}


def _get_checked(store: ArtifactStore, artifacts: str, job_id: str, name: str,
                 published: dict[str, Any], target: Path) -> None:
    """One file of a publication's manifest into `target`, checked against its size and hash."""
    artifact_id = published["artifact_id"]
    try:
        copy = get(store, artifact_id, target)
    except ArtifactNotFound:
        raise _not_in_store(job_id, name, artifact_id, artifacts) from None
    expected = Digest(published["size"], published["sha256"])
    if copy != expected:
        damage = expected.describe_difference(copy, "published")
        raise PullError(
            f"job {job_id!r}: its {name} ({artifact_id}) in the artifact store "
            f"{where(artifacts)} is damaged ({damage}); restore that file from a "
            "backup of the store, or publish the job again: "
            f"`automl run JOB_FILE --job-id {job_id}`")


def _pull_unchecked(study: optuna.Study, store: ArtifactStore, artifacts: str, out: Path) -> Path:
    """A job published before publications had a manifest: its files by name (nothing to
    check them against), as long as each name is one file."""
    job_id = study.study_name
    metas = get_all_artifact_meta(study)
    names = [m.filename for m in metas]
    missing = set(CHECKPOINT_FILES) - set(names)
    if missing or not set(names) & {"automl.json", "metrics.json"}:  # a model folder, or v1
        raise PullError(f"job {job_id!r}: the artifact store lacks "
                        f"{sorted(missing) or ['automl.json']}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise PullError(
            f"job {job_id!r} was published without a manifest, and its study holds more than "
            f"one {', '.join(twice)} (uploaded by other means, such as optuna-dashboard): "
            "delete the ones that are not the job's in the dashboard, or publish the job again: "
            f"`automl run JOB_FILE --job-id {job_id}`")

    def fill(staging: Path) -> None:
        for meta in metas:
            if Path(meta.filename).name != meta.filename or meta.filename in ("", ".", ".."):
                # not a name Optuna's upload writes (it keeps the file's own name): one set in
                # the database by hand or through a dashboard upload must not reach outside `out`
                log.warning("skipping artifact %r of job %s: not a plain file name",
                            meta.filename, job_id)
                continue
            try:
                download_artifact(artifact_store=store, file_path=str(staging / meta.filename),
                                  artifact_id=meta.artifact_id)
            except ArtifactNotFound:
                raise _not_in_store(job_id, meta.filename, meta.artifact_id, artifacts) from None

    return _all_or_nothing(out, fill)


def _not_in_store(job_id: str, name: str, artifact_id: str, artifacts: str) -> PullError:
    return PullError(
        f"job {job_id!r}: its {name} ({artifact_id}) is not in the artifact store "
        f"{where(artifacts)}; point --artifacts (or AUTOML_ARTIFACTS) at the store the job "
        f"wrote to (if it was deleted there, publish the job again: "
        f"`automl run JOB_FILE --job-id {job_id}`)")


def kept_checkpoint_of(run_folder: Path, ray_trial_id: str) -> Path | None:
    """The checkpoint retention kept for a trial of a job's Ray Tune run, if any."""
    for trial_folder in run_folder.glob("run_tune_trial_*"):
        result = trial_folder / "result.json"  # Ray's log of the trial: its id on every line
        if not result.is_file():
            continue
        with result.open() as lines:
            first = lines.readline()
        if first and json.loads(first).get("trial_id") == ray_trial_id:
            kept = sorted(trial_folder.glob("checkpoint_*"))
            return kept[-1] if kept else None
    return None


def pull_checkpoint(
    checkpoint: Path, out: Path, job_id: str, trial: optuna.trial.FrozenTrial, objective: str,
    test: dict[str, Any] | None, counts: TrialCounts, dataset: str,
) -> Path:
    """A kept trial's checkpoint as the same model folder the published best is (its test
    scores when it has them: a Pareto-front member's)."""

    def fill(staging: Path) -> None:
        write_model_folder(checkpoint, staging, job_id, trial, objective, test or {}, counts,
                           dataset)

    return _all_or_nothing(out, fill)


def _all_or_nothing(out: Path, fill: Callable[[Path], None]) -> Path:
    """`fill` a staging folder inside `out`, then move its files in: all of them or none."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=out))
    try:
        fill(staging)
        for path in staging.iterdir():
            path.replace(out / path.name)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
