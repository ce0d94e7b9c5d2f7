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
afresh (new ids) when resumed. Pull takes the manifest's files by id, never by name among
whatever the study holds: anyone with the dashboard can upload a file of any name to a study.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import save_note
from ray import tune
from sqlalchemy.orm import Session

from automl.errors import PublishError, PullError, PushError
from automl.jobs.report import model_card_body, write_confusion_png, write_hub_card
from automl.search import keys
from automl.search._optuna import storage_of, study_id
from automl.search.keys import TrialCounts
from automl.settings import Settings
from storage.artifacts import (
    ArtifactStore,
    Digest,
    StoredCopyDiffers,
    artifact_store,
    get,
    put,
    remove_quietly,
)
from storage.jobs import JobStore, Lease, LeaseLost
from storage.optuna_storage import artifact_record, retry, set_study_attrs, study_transaction
from workers.model.hub import write_hub_folder

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json")  # and automl.json, or metrics.json (v1)


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
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    config = trial.user_attrs.get(keys.CONFIG, {})
    write_hub_folder(checkpoint, out, {"job": job_id, "trial": trial.number,
                                       "objective": objective, "test_metrics": scalars,
                                       "costs": trial.user_attrs.get(keys.COSTS)})
    if classes is not None and "test_confusion_matrix" in test:
        write_confusion_png(test["test_confusion_matrix"], classes, out / "confusion_matrix.png")
    body = model_card_body(
        job_id=job_id, trial_number=trial.number, config=config, dataset=dataset,
        classes=classes or json.loads((out / "automl.json").read_text())["classes"],
        val_value=float(trial.values[0]) if trial.values else float("nan"),
        objective=objective, test_metrics=scalars, counts=counts,
        costs=trial.user_attrs.get(keys.COSTS),
    )
    write_hub_card(out / "README.md", body, job_id=job_id, config=config, dataset=dataset,
                   test_metrics=scalars)
    return scalars, body


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
    where = _where(artifacts)
    need = sum(p.stat().st_size for p in paths) / 1e6
    if isinstance(error, StoredCopyDiffers):
        cause = f"what it read back differs from what was written ({error})"
        fix = "check the store's disk (or bucket)"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause, fix = f"it is full ({error.strerror})", f"free space there (the model needs {need:.1f} MB)"
    else:
        cause = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
        fix = "let the runner write there, or point AUTOML_ARTIFACTS at a store it can write"
    return (f"job {job_id}: cannot publish the best model to the artifact store {where}: "
            f"{cause}; nothing was published: {fix}")


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
            artifact_id = published["artifact_id"]
            try:
                copy = get(store, artifact_id, staging / name)
            except ArtifactNotFound:
                raise _not_in_store(job_id, name, artifact_id, artifacts) from None
            expected = Digest(published["size"], published["sha256"])
            if copy != expected:
                damage = expected.describe_difference(copy, "published")
                raise PullError(
                    f"job {job_id!r}: its {name} ({artifact_id}) in the artifact store "
                    f"{_where(artifacts)} is damaged ({damage}); restore that file from a "
                    "backup of the store, or publish the job again: "
                    f"`automl run JOB_FILE --job-id {job_id}`")

    return _all_or_nothing(out, fill)


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
        f"{_where(artifacts)}; point --artifacts (or AUTOML_ARTIFACTS) at the store the job "
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


def _where(artifacts: str) -> str:
    return artifacts if artifacts.startswith("s3://") else str(Path(artifacts).expanduser().resolve())


def push_folder(folder: Path, repo: str, private: bool) -> str:
    """Upload a pulled model folder to the Hugging Face Hub as model repository `repo` (created
    if missing); the token is HF_TOKEN's (or `hf auth login`'s). Returns the repository's URL."""
    import httpx2
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise PushError(f"--repo {repo!r} is not OWNER/NAME (for example my-org/digits-resnet)")
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                          commit_message="automl: fine-tuned model")
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PushError(f"the Hugging Face Hub refused the token for {repo} ({status}): set "
                            "HF_TOKEN to a token with write access to it") from None
        raise PushError(f"the Hugging Face Hub refused the upload to {repo}: "
                        f"{str(error).splitlines()[0]}") from None
    except (httpx2.TransportError, OSError) as error:
        raise PushError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({error}); "
                        "push from a machine with network access, or set HF_ENDPOINT to your "
                        "Hub mirror") from None
    return str(url)
