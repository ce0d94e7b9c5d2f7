"""`automl run`, `submit`, `list`, `status`, `cancel`, `resume`, `pull`: jobs, in the foreground
or through the service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from automl.cli.common import (
    ApiOpt,
    ArtifactsOpt,
    RayOpt,
    StorageOpt,
    backend,
    err,
    fail,
    out,
    settings_from,
    storage_flags,
)
from automl.cli.render import (
    LiveView,
    jobs_table,
    pareto_table,
    print_deployable,
    print_outcome,
    status_panel,
)
from automl.jobs.local_ray import own_ray_auth


def run(
    job_file: Annotated[Path, typer.Argument(help="job spec (YAML)")],
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    ray_address: RayOpt = None,
    job_id: Annotated[
        str | None,
        typer.Option(help="run under this id: resumes the job if it exists (its study, Ray "
                     "experiment and stored spec), else starts a new one with this id"),
    ] = None,
) -> None:
    """Run a search job in the foreground on local Ray (or --ray-address), live."""
    settings = settings_from(storage, artifacts, ray_address)
    own_ray_auth(settings.ray_address)
    from automl.jobs.preflight import check_dataset, check_pretrained_weights
    from automl.jobs.process import execute_job, resume_hint, start_foreground
    from automl.search.job_file import load_spec
    from automl.search.job_ids import check_job_id
    from storage.jobs import JobStore
    from storage.optuna_storage import redact

    spec = load_spec(job_file)
    if job_id is not None:
        check_job_id(job_id)
    check_dataset(spec)  # before the job row: a bad dataset leaves nothing behind
    check_pretrained_weights(spec)
    store = JobStore(settings.storage_url, connect_seconds=10)
    job_id, created, differs = start_foreground(store, spec, job_id)
    if not created:
        err.print(f"resuming job {job_id}", highlight=False)
        if differs:
            err.print(f"[yellow]warning:[/] {escape(str(job_file))} differs from the spec "
                      f"job {job_id} started with; the job keeps its own", highlight=False)
    err.print(
        f"job [bold]{job_id}[/]: {spec.budget.n_trials} trials x {spec.budget.max_epochs} epochs, "
        f"{spec.max_concurrent_trials} at a time; study {job_id} in {redact(settings.storage_url)}",
        highlight=False,
        soft_wrap=True,
    )
    from automl.search.applicability import warm_start_off

    if spec.strategy.warm_start and (off := warm_start_off(spec.search_space())):
        err.print(f"warm start off: {off}", highlight=False, soft_wrap=True)
    view = LiveView(
        job_id, spec.budget.n_trials, spec.objective.maximize, spec.objective.metric,
        spec.budget.time_limit, console=err,
    )
    job_path = str(job_file.resolve())
    from automl.errors import JobError

    try:
        with view:
            outcome = execute_job(job_id, settings, store, events=view, job_file=job_path,
                                  spec=spec, connect_seconds=10)
    except JobError:  # refused up front (e.g. resources no node has): leave no trace
        if created:
            store.discard(job_id)
        err.print()  # off a terminal the live view's last line has no line break
        raise
    except KeyboardInterrupt:
        err.print(f"\ninterrupted: job {job_id} stopped (its trials are kept); "
                  f"{resume_hint(job_id, job_path)}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    print_outcome(outcome, spec.objective.metric, settings, storage_flags(settings), err)
    if outcome.state != "succeeded":
        raise typer.Exit(1)


def submit(
    job_file: Annotated[Path, typer.Argument(help="job spec (YAML)")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Queue a search job; a runner (`automl runner`) picks it up. Prints the job id."""
    from automl.search.job_file import load_spec

    spec = load_spec(job_file)  # before the backend: a refused spec leaves nothing behind
    job = backend(api, storage).submit(spec)
    err.print(f"submitted {job.id} ({job.state}); watch it: automl status {job.id} --watch",
              highlight=False, soft_wrap=True)
    out.print(job.id, highlight=False)


def list_jobs(
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """List jobs, newest first."""
    from storage.models import JOB_STATES

    if state is not None and state not in JOB_STATES:
        fail(f"--state {state!r} is not one of {', '.join(JOB_STATES)}")
    page = backend(api, storage).list_jobs(state, limit, 0)
    # one line per job, whole, also when piped (rich wraps a table to 80 columns off a terminal)
    console = out if out.is_terminal else Console(width=1000)
    console.print(jobs_table(page))
    console.print(f"{len(page.jobs)} of {page.total} job(s)", highlight=False)


def status(
    job: Annotated[str, typer.Argument(help="job id")],
    watch: Annotated[bool, typer.Option("--watch", help="follow until the job finishes")] = False,
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """A job's state, trial counts, best so far and dashboard link."""
    from rich.live import Live

    source = backend(api, storage)
    view = source.get(job)
    if watch:
        # transient: the final panel below is printed once, to stdout, terminal or not
        with Live(status_panel(view), console=err, refresh_per_second=1, transient=True) as live:
            while view.state in ("queued", "running"):
                time.sleep(2)
                view = source.get(job)
                live.update(status_panel(view))
    # soft_wrap: the resume command in an error line must stay one copyable line
    out.print(status_panel(view), soft_wrap=True)
    if view.state in ("failed", "cancelled"):
        raise typer.Exit(1)


def cancel(
    job: Annotated[str, typer.Argument(help="job id")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Cancel a job: a queued one at once, a running one as soon as its runner sees it."""
    view = backend(api, storage).cancel(job)
    note = "cancelled" if view.state == "cancelled" else "cancel requested; trials stopping"
    out.print(f"job {job}: {note}", highlight=False)


def resume(
    job: Annotated[str, typer.Argument(help="job id")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Queue a failed or cancelled job again: a runner resumes it where it stopped."""
    view = backend(api, storage).resume(job)
    out.print(f"job {job}: {view.state}; a runner resumes it (watch it: automl status {job} "
              "--watch)", highlight=False, soft_wrap=True)


def pareto(
    job: Annotated[str, typer.Argument(help="job id")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a member")] = False,
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """A Pareto-front job's front: each member's metric, costs, backbone and image size (and,
    once the job has ended, its test scores). Pull one with `automl pull JOB --trial N`."""
    import json

    view = backend(api, storage).pareto(job)
    if as_json:
        for member in view.members:
            print(json.dumps(member.model_dump()))
        return
    console = out if out.is_terminal else Console(width=1000)
    console.print(pareto_table(view))
    note = "test scores from the end of the job" if view.final else "the front so far (no test scores yet)"
    console.print(f"{len(view.members)} member(s); {note}", highlight=False)


DeployableOpt = Annotated[bool, typer.Option(
    "--deployable", help="the deployable model of the job's distill stage (the distilled "
    "student, its ONNX and int8 files)")]


def one_model(trial: int | None, deployable: bool) -> None:
    if trial is not None and deployable:
        fail("--trial and --deployable name different models; give one of them")


def pull(
    job: Annotated[str, typer.Argument(help="job id")],
    folder: Annotated[Path, typer.Option("--out", help="directory to write the checkpoint into")],
    trial: Annotated[int | None, typer.Option(
        min=0, help="a kept trial instead of the published best (a Pareto-front member)")] = None,
    deployable: DeployableOpt = False,
    api: ApiOpt = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Download the best trial's checkpoint (and its test report) into --out."""
    if folder.exists() and not folder.is_dir():
        fail(f"--out {folder} is a file; give a directory (created if missing)")
    one_model(trial, deployable)
    try:
        written = backend(api, storage, artifacts).pull(job, folder, trial, deployable)
    except OSError as error:
        fail(f"cannot write to --out {folder}: {error.strerror or error}")
    files = ", ".join(sorted(p.name for p in written.iterdir() if not p.name.startswith(".")))
    out.print(f"wrote {written}: {files}", highlight=False, soft_wrap=True)


def push(
    job: Annotated[str, typer.Argument(help="job id")],
    repo: Annotated[str, typer.Option(help="Hugging Face Hub model repository, OWNER/NAME")],
    private: Annotated[bool, typer.Option(help="create the repository private")] = False,
    trial: Annotated[int | None, typer.Option(
        min=0, help="a kept trial instead of the published best (a Pareto-front member)")] = None,
    deployable: DeployableOpt = False,
    api: ApiOpt = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Upload the best trial's model folder (what `automl pull` writes) to the Hugging Face Hub;
    the token is HF_TOKEN's."""
    import tempfile

    from automl.jobs.push import push_folder

    one_model(trial, deployable)
    with tempfile.TemporaryDirectory(prefix="automl-push-") as tmp:
        written = backend(api, storage, artifacts).pull(job, Path(tmp) / "model", trial,
                                                        deployable)
        url = push_folder(written, repo, private)
    out.print(f"pushed {job} to {url}", highlight=False, soft_wrap=True)


def distill(
    job: Annotated[str, typer.Argument(help="a succeeded job's id")],
    student: Annotated[list[str] | None, typer.Option(
        help="a timm backbone (repeatable: searched over); default: the job's distill.student, "
        "else auto")] = None,
    limit: Annotated[list[str] | None, typer.Option(
        help="the student's limit COST=VALUE (repeatable): latency_ms, params_m, macs_g; "
        "default: distill.limits, else objective.limits")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="epochs per student trial")] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="student trials")] = None,
    teacher_trial: Annotated[int | None, typer.Option(
        min=0, help="a kept trial as the teacher (default: the published best)")] = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Distill a succeeded job's best model into a student that fits the limits, in the
    foreground (study JOB-distill), and publish it, with its int8 form, as the job's deployable
    model."""
    from automl.cli.models import parse_overrides

    settings = settings_from(storage, artifacts, ray_address)
    own_ray_auth(settings.ray_address)
    from automl.errors import UnknownJob
    from automl.jobs.driver import distill_job
    from storage.jobs import JobStore

    changes: dict[str, object] = {}
    if student:
        changes["student"] = student[0] if len(student) == 1 else student
    if limit:
        changes["limits"] = parse_overrides(limit)
    for name, value in (("epochs", epochs), ("trials", trials), ("teacher_trial", teacher_trial)):
        if value is not None:
            changes[name] = value
    row = JobStore(settings.storage_url, connect_seconds=10).find(job)
    if row is None:
        raise UnknownJob(job)
    if row.state != "succeeded":
        fail(f"job {job} is {row.state}: distill a job that succeeded (its best model is the "
             "teacher)")
    err.print(f"distilling job [bold]{job}[/] (study {job}-distill)", highlight=False)
    outcome = distill_job(job, settings, row.spec, changes)
    if outcome.state != "succeeded" or outcome.deployable is None:
        fail(f"job {job}: {outcome.error or outcome.state}", code=1)
    print_deployable(outcome.job_id, outcome.deployable, storage_flags(settings))
