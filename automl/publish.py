"""The best trial's files as Optuna artifacts of the job's study, pulled by job id.

Publishing through Optuna's artifact API (rather than a side table) means optuna-dashboard shows
the very files `automl pull` downloads. They hang off the study, not the trial: Optuna 5 makes a
finished trial read-only, and the best trial is only known once every trial has finished. The
study records which trial they came from (user attr `best_trial`), and its dashboard note is the
model card.
"""

from __future__ import annotations

import logging
import mimetypes
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta, upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from storage.artifacts import artifact_store

log = logging.getLogger(__name__)

BEST_TRIAL_ATTR = "best_trial"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "metrics.json")


class PullError(LookupError):
    """The job or its best checkpoint cannot be found; the message says what to do instead."""


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
    number = study.user_attrs.get(BEST_TRIAL_ATTR)
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
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=out))
    try:
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
