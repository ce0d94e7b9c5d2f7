"""`automl deploy`: a job's published model as a new version of a Triton/KServe model repository,
and of the MLflow Model Registry when the job is tracked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from automl.cli.common import ArtifactsOpt, StorageOpt, err, fail, out, settings_from
from automl.cli.jobs import DeployableOpt


def deploy(
    job: Annotated[str, typer.Argument(help="job id")],
    deployable: DeployableOpt = False,
    name: Annotated[str | None, typer.Option(
        help="the model's name in the repository (and the registry); default: the job id")] = None,
    repository: Annotated[Path | None, typer.Option(
        help="the model repository folder (default: AUTOML_HOME/models)")] = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Add the job's published model (or its deployable one) as the next version of a
    Triton/KServe model repository (ONNX, config.pbtxt, card, monitoring reference), and
    register it in MLflow when the job is tracked."""
    import tempfile

    from automl.jobs.deploy import check_name, check_repository
    from automl.jobs.deploy import deploy as deploy_job
    from automl.service.service import JobService

    # before anything is looked up
    name = check_name(name) if name is not None else check_name(job, "the job id (give --name)")
    settings = settings_from(storage, artifacts)
    root = check_repository(repository or settings.home / "models")

    def say(line: str) -> None:
        out.print(line, highlight=False, soft_wrap=True)

    try:
        with tempfile.TemporaryDirectory(prefix="automl-deploy-") as tmp:
            folder = JobService(settings).pull(job, Path(tmp) / "model", None, deployable)
            done = deploy_job(settings, folder, job, "deployable" if deployable else "best",
                              name, root, say)
    except OSError as error:
        fail(f"cannot write the model repository {root}: {error.strerror or error}")
    for warning in done.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    say(f"deployed {job} ({done.source}{', int8' if done.int8 else ''}) as {done.name} version "
        f"{done.version}: {done.folder}")
    say(f"serve it here: automl serve-model {done.name}"
        + ("" if done.repository == settings.home / "models"
           else f" --repository {done.repository}"))
    say(f"serve the repository with Triton (KServe's Triton runtime loads the same folder): "
        f"tritonserver --model-repository {done.repository}")
    if done.registered:
        say(f"registered {done.registered} (mlflow models serve -m {done.registered})")
