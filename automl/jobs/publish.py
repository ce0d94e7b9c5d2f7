"""The best trial's files as Optuna artifacts of the job's study, pulled by job id.

Publishing through Optuna's artifact API (rather than a side table) means optuna-dashboard shows
the very files `automl pull` downloads. They hang off the study, not the trial: Optuna 5 makes a
finished trial read-only, and the best trial is only known once every trial has finished. The
study records which trial they came from (user attr `best_trial`), and its dashboard note is the
model card.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import save_note
from ray import tune

from automl.errors import PullError
from automl.jobs.report import write_confusion_png, write_model_card
from automl.search import keys
from automl.search.keys import TrialCounts
from storage.artifacts import ArtifactStore, artifact_store
from storage.optuna_storage import retry
from workers.checkpoint import copy_model_files
from workers.tune_adapter import copy_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json", "metrics.json")


def publish_best(
    study: optuna.Study,
    artifacts: str,
    checkpoint: tune.Checkpoint,
    trial: optuna.trial.FrozenTrial,
    objective: str,
    test: dict[str, Any],
    counts: TrialCounts,
) -> dict[str, Any]:
    """Publish the best trial: its model files, its test report, confusion matrix and model card
    as the study's artifacts, the card as its dashboard note, and which trial it is. Returns the
    test scores (the scalars of `test`)."""
    classes = test.pop("classes")
    with tempfile.TemporaryDirectory(prefix="automl-publish-") as tmp:
        folder = copy_checkpoint(checkpoint, Path(tmp))
        (folder / "test_metrics.json").write_text(json.dumps(test, indent=2, sort_keys=True))
        if "test_confusion_matrix" in test:
            write_confusion_png(test["test_confusion_matrix"], classes, folder / "confusion_matrix.png")
        write_model_card(
            folder / "model_card.md",
            job_id=study.study_name,
            trial_number=trial.number,
            config=trial.user_attrs.get(keys.CONFIG, {}),
            classes=classes,
            val_value=float(trial.values[0]),
            objective=objective,
            test_metrics=test,
            counts=counts,
        )
        store = artifact_store(artifacts)
        retry(lambda: publish(study, store, folder), what="publish the best checkpoint")
        card = (folder / "model_card.md").read_text()
        retry(lambda: save_note(study, card), what="write the model card note")
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    retry(lambda: study.set_user_attr(keys.TEST_METRICS, scalars), what="record test metrics")
    retry(lambda: study.set_user_attr(keys.BEST_TRIAL, trial.number), what="record the best trial")
    return scalars


def publish(study: optuna.Study, store: ArtifactStore, folder: Path) -> list[str]:
    """Upload every file in `folder` to the study, skipping names it already has (idempotent)."""
    have = {meta.filename for meta in get_all_artifact_meta(study)}
    ids = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in have:
            mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            ids.append(
                upload_artifact(
                    artifact_store=store,
                    file_path=str(path),
                    study_or_trial=study,
                    mimetype=mimetype,
                )
            )
    return ids


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
    """Write the best trial's checkpoint (and reports) into `out`; all files or none."""
    metas = get_all_artifact_meta(published_study(storage, job_id))
    missing = set(CHECKPOINT_FILES) - {m.filename for m in metas}
    if missing:
        raise PullError(f"job {job_id!r}: the artifact store lacks {sorted(missing)}")
    store = artifact_store(artifacts, create=False)  # a wrong path must not become a store

    def fill(staging: Path) -> None:
        for meta in metas:
            if Path(meta.filename).name != meta.filename or meta.filename in ("", ".", ".."):
                # not a name Optuna's upload writes (it keeps the file's own name): one set in
                # the database by hand or through a dashboard upload must not reach outside `out`
                log.warning("skipping artifact %r of job %s: not a plain file name",
                            meta.filename, job_id)
                continue
            try:
                download_artifact(
                    artifact_store=store,
                    file_path=str(staging / meta.filename),
                    artifact_id=meta.artifact_id,
                )
            except ArtifactNotFound as error:
                raise PullError(
                    f"job {job_id!r}: its {meta.filename} ({meta.artifact_id}) is not in the "
                    f"artifact store {_where(artifacts)}; point --artifacts (or AUTOML_ARTIFACTS) at "
                    "the store the job wrote to"
                ) from error

    return _all_or_nothing(out, fill)


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


def pull_checkpoint(folder: Path, out: Path, test: dict[str, Any] | None) -> Path:
    """A kept checkpoint's model files (and its test scores, if it has them) into `out`."""

    def fill(staging: Path) -> None:
        copy_model_files(folder, staging)
        if test:
            (staging / "test_metrics.json").write_text(json.dumps(test, indent=2, sort_keys=True))

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


def _where(artifacts: str) -> str:
    return artifacts if artifacts.startswith("s3://") else str(Path(artifacts).expanduser().resolve())
