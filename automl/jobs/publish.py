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
import re
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

from automl.errors import PullError, PushError
from automl.jobs.report import model_card_body, write_confusion_png, write_hub_card
from automl.search import keys
from automl.search.keys import TrialCounts
from storage.artifacts import ArtifactStore, artifact_store
from storage.optuna_storage import retry
from workers.hub import write_hub_folder

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json")  # and automl.json, or metrics.json (v1)


def publish_best(
    study: optuna.Study,
    artifacts: str,
    checkpoint: tune.Checkpoint,
    trial: optuna.trial.FrozenTrial,
    objective: str,
    test: dict[str, Any],
    counts: TrialCounts,
    also: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Publish the best trial as a timm / Hugging Face Hub model folder (timm's config.json and
    weights, automl.json, the model card README.md, the test split's confusion matrix) in the
    study's artifacts, the card as its dashboard note, and which trial it is. Returns the test
    scores (the scalars of `test`). `also` sees the folder before it goes (experiment
    tracking keeps the card and the matrix)."""
    with tempfile.TemporaryDirectory(prefix="automl-publish-") as tmp:
        folder = Path(tmp)
        with checkpoint.as_directory() as directory:
            scalars, body = write_model_folder(Path(directory), folder, study.study_name, trial,
                                               objective, test, counts)
        if also is not None:
            also(folder)
        store = artifact_store(artifacts)
        retry(lambda: publish(study, store, folder), what="publish the best checkpoint")
        retry(lambda: save_note(study, body), what="write the model card note")
    retry(lambda: study.set_user_attr(keys.TEST_METRICS, scalars), what="record test metrics")
    retry(lambda: study.set_user_attr(keys.BEST_TRIAL, trial.number), what="record the best trial")
    return scalars


def write_model_folder(
    checkpoint: Path, out: Path, job_id: str, trial: optuna.trial.FrozenTrial, objective: str,
    test: dict[str, Any], counts: TrialCounts,
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
        job_id=job_id, trial_number=trial.number, config=config,
        classes=classes or json.loads((out / "automl.json").read_text())["classes"],
        val_value=float(trial.values[0]) if trial.values else float("nan"),
        objective=objective, test_metrics=scalars, counts=counts,
        costs=trial.user_attrs.get(keys.COSTS),
    )
    write_hub_card(out / "README.md", body, job_id=job_id, config=config, test_metrics=scalars)
    return scalars, body


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
    names = {m.filename for m in metas}
    missing = set(CHECKPOINT_FILES) - names
    if missing or not names & {"automl.json", "metrics.json"}:  # a model folder, or a v1 one
        raise PullError(f"job {job_id!r}: the artifact store lacks "
                        f"{sorted(missing) or ['automl.json']}")
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


def pull_checkpoint(
    checkpoint: Path, out: Path, job_id: str, trial: optuna.trial.FrozenTrial, objective: str,
    test: dict[str, Any] | None, counts: TrialCounts,
) -> Path:
    """A kept trial's checkpoint as the same model folder the published best is (its test
    scores when it has them: a Pareto-front member's)."""

    def fill(staging: Path) -> None:
        write_model_folder(checkpoint, staging, job_id, trial, objective, test or {}, counts)

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
