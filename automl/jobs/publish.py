"""The best trial's files as Optuna artifacts of the job's study, pulled by job id.

Publishing through Optuna's artifact API (rather than a side table) means optuna-dashboard shows
the very files `automl pull` downloads. They hang off the study, not the trial: Optuna 5 makes a
finished trial read-only, and the best trial is only known once every trial has finished. The
study records which trial they came from (user attr `best_trial`), and its dashboard note is the
model card.

A publication is all or nothing. Every file goes to the artifact store under a fresh id and is
read back (size and sha256) before anything is registered; then one database transaction
registers them all: Optuna's artifact records (what the dashboard lists), the manifest that
pull follows and checks (`keys.PUBLISHED_FILES`: each file's id, size and sha256), the best
trial and its test scores. For a job with a row that transaction holds the job's lease
(`JobStore.fenced`), so a driver that lost its job publishes nothing. A failure before the
commit removes the files written so far: the job fails with nothing published, and publishes
afresh (new ids) when resumed. `automl.jobs.pull` reads a publication back.
"""

from __future__ import annotations

import errno
import json
import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from optuna_dashboard import save_note
from ray import tune
from sqlalchemy.orm import Session

from automl.errors import PublishError
from automl.jobs.report import (
    model_card_body,
    write_confusion_png,
    write_evaluation,
    write_hub_card,
)
from automl.search import keys
from automl.search._optuna import storage_of, study_id
from automl.search.keys import TrialCounts
from automl.settings import Settings
from storage.artifacts import (
    StoredCopyDiffers,
    artifact_store,
    put,
    remove_quietly,
    where,
)
from storage.jobs import JobStore, Lease, LeaseLost
from storage.optuna_storage import artifact_record, retry, set_study_attrs, study_transaction
from workers.model.hub import write_hub_folder

log = logging.getLogger(__name__)

def publish_best(
    study: optuna.Study,
    settings: Settings,
    checkpoint: tune.Checkpoint,
    trial: optuna.trial.FrozenTrial,
    objective: str,
    test: dict[str, Any],
    counts: TrialCounts,
    *,
    dataset: str,
    lease: Lease | None = None,
    also: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Publish the best trial as a timm / Hugging Face Hub model folder (timm's config.json and
    weights, automl.json, the model card README.md, the test split's confusion matrix) in the
    study's artifacts, the card as its dashboard note, and which trial it is. Returns the test
    scores (the scalars of `test`). `lease`: the job's claim, for a job with a row (the
    publication lands only while it holds, else `LeaseLost`); `dataset`: the dataset's name on
    the card. `also` sees the folder before it goes (experiment tracking keeps the card and
    the matrix)."""
    with tempfile.TemporaryDirectory(prefix="automl-publish-") as tmp:
        folder = Path(tmp)
        with checkpoint.as_directory() as directory:
            scalars, body = write_model_folder(Path(directory), folder, study.study_name, trial,
                                               objective, test, counts, dataset)
        if also is not None:
            also(folder)

        record = {keys.TEST_METRICS: scalars, keys.BEST_TRIAL: trial.number}
        if lease is None:  # a study without a job row (`run_job` called by itself)
            publish(study, settings.artifacts_path, folder, record)
        else:
            jobs = JobStore(settings.storage_url)
            publish(study, settings.artifacts_path, folder, record, lambda: jobs.fenced(lease))
    retry(lambda: save_note(study, body), what="write the model card note")
    return scalars


def write_model_folder(
    checkpoint: Path, out: Path, job_id: str, trial: optuna.trial.FrozenTrial, objective: str,
    test: dict[str, Any], counts: TrialCounts, dataset: str,
) -> tuple[dict[str, Any], str]:
    """A trial's checkpoint as the folder users pull: timm's layout, our metadata, the card,
    and (with test scores that have one) the confusion matrix. Returns the test scores and the
    card's text."""
    test = dict(test)
    classes = test.pop("classes", None)
    evaluation = test.pop("evaluation", None)
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    config = trial.user_attrs.get(keys.CONFIG, {})
    calibration = (evaluation or {}).get("calibration") or {}
    write_hub_folder(checkpoint, out, {"job": job_id, "trial": trial.number,
                                       "objective": objective, "test_metrics": scalars,
                                       "costs": trial.user_attrs.get(keys.COSTS),
                                       "temperature": calibration.get("temperature")})
    if classes is not None and "test_confusion_matrix" in test:
        write_confusion_png(test["test_confusion_matrix"], classes, out / "confusion_matrix.png")
    if evaluation is not None:
        # named as users know it, not by the folder it was scored from
        evaluation = {**evaluation, "checkpoint": f"{job_id} trial {trial.number}",
                      "dataset": dataset, "worst_errors": [
                          {**e, "path": shown_path(e["path"], config.get("source"))}
                          for e in evaluation.get("worst_errors") or []]}
        write_evaluation(evaluation, out)
    body = model_card_body(
        job_id=job_id, trial_number=trial.number, config=config, dataset=dataset,
        classes=classes or json.loads((out / "automl.json").read_text())["classes"],
        val_value=float(trial.values[0]) if trial.values else float("nan"),
        objective=objective, test_metrics=scalars, counts=counts,
        costs=trial.user_attrs.get(keys.COSTS), evaluation=evaluation,
    )
    write_hub_card(out / "README.md", body, job_id=job_id, config=config, dataset=dataset,
                   test_metrics=scalars)
    return scalars, body


def shown_path(path: str | None, source: str | None) -> str | None:
    """An image's path as the published model shows it: relative to the dataset's folder, or
    its file name (a publication does not tell where the runner keeps its files)."""
    if path is None:
        return None
    if source is not None and not source.startswith("builtin:"):
        root = Path(source) if Path(source).is_dir() else Path(source).parent
        if Path(path).is_relative_to(root):
            return str(Path(path).relative_to(root))
    return Path(path).name


def publish(
    study: optuna.Study,
    artifacts: str,
    folder: Path,
    record: dict[str, Any] | None = None,
    transaction: Callable[[], AbstractContextManager[Session]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every file in `folder` written to the store and checked, then registered with the
    study user attributes `record` in one `transaction()` (default: one on the study's
    database; a job's driver gives its fenced one); returns the manifest. A publication the
    study had already (a job run again) is replaced: its records go in the same transaction,
    its files after. Raises `PublishError` (the store failed: nothing registered, the files
    written removed), or `LeaseLost` (likewise)."""
    files: dict[str, dict[str, Any]] = {}
    written: list[str] = []
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    try:
        store = artifact_store(artifacts)
        for path in paths:
            artifact_id, digest = put(store, path, written)
            files[path.name] = {"artifact_id": artifact_id, "size": digest.size,
                                "sha256": digest.sha256}
    except BaseException as error:
        if written:
            remove_quietly(store, written)
        if isinstance(error, OSError | StoredCopyDiffers):
            raise PublishError(_cannot_publish(study.study_name, artifacts, paths, error)) from None
        raise
    previous: dict[str, dict[str, Any]] = study.user_attrs.get(keys.PUBLISHED_FILES) or {}
    begin = transaction or (lambda: study_transaction(storage_of(study)))

    def register() -> None:
        with begin() as session:
            set_study_attrs(
                session, study_id(study), user={**(record or {}), keys.PUBLISHED_FILES: files},
                system=dict(artifact_record(f["artifact_id"], name) for name, f in files.items()),
                drop_system=[artifact_record(f["artifact_id"], name)[0]
                             for name, f in previous.items()],
            )

    try:
        retry(register, what="register the published model")
    except LeaseLost:  # refused before anything was written
        remove_quietly(store, written)
        raise
    # any other failure (the database lost while committing) may have come after the commit
    # landed: the files stay, unreferenced at worst
    remove_quietly(store, [f["artifact_id"] for f in previous.values()])
    return files


def _cannot_publish(
    job_id: str, artifacts: str, paths: list[Path], error: OSError | StoredCopyDiffers
) -> str:
    """One line: which store, what went wrong, the fix (the caller adds how to resume)."""
    store = where(artifacts)
    need = sum(p.stat().st_size for p in paths) / 1e6
    if isinstance(error, StoredCopyDiffers):
        cause = f"what it read back differs from what was written ({error})"
        fix = "check the store's disk (or bucket)"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause, fix = f"it is full ({error.strerror})", f"free space there (the model needs {need:.1f} MB)"
    else:
        cause = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
        fix = "let the runner write there, or point AUTOML_ARTIFACTS at a store it can write"
    return (f"job {job_id}: cannot publish the best model to the artifact store {store}: "
            f"{cause}; nothing was published: {fix}")
