"""The `automl` command line (typer + rich). Progress goes to stderr, results to stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="Hyperparameter search for fine-tuning pretrained image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


def _mount_benchmarks() -> None:
    """`automl bench ...` where the benchmarks package is installed (it is, from a checkout)."""
    try:
        from benchmarks.cli import app as bench
    except ImportError:
        return
    app.add_typer(bench, name="bench")


_mount_benchmarks()


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def own_ray_auth(address: str | None) -> None:
    """A Ray cluster automl starts itself keeps Ray's default, token authentication, but chosen
    explicitly, which spares every run Ray's warning about that default. Ray reads the mode once,
    when it is imported, so this must come first (set later, the driver cannot reach its own
    cluster); a cluster at an address is left as its owner set it up."""
    if address in (None, "local") and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML scalars (0.1, 1e-4, true, all, [30, 60])."""
    from automl.spec import load_yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key=value, e.g. --set lr=0.001")
        try:
            out[key.strip()] = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise UserError(f"--set {pair!r}: value is not valid YAML ({error})") from error
    return out


@app.command("train-one")
def train_one(
    dataset: Annotated[str, typer.Option(help="ImageFolder dir, CSV manifest or builtin:digits")],
    backbone: Annotated[str, typer.Option(help="any timm model name")] = "resnet10t",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="trial setting key=value (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="directory for the checkpoints")] = None,
) -> None:
    """Run one fine-tuning trial and print its final metrics as one JSON line."""
    from workers.config import ConfigError, TrialConfig
    from workers.datasets import DatasetError
    from workers.engine import EpochResult, train

    try:
        values = {"backbone": backbone, "epochs": epochs, "source": dataset}
        values.update(parse_overrides(set_ or []))
        config = TrialConfig.from_dict(values)
        home = settings_from().home  # AUTOML_HOME, like every other command
        workdir = out or home / "train-one" / time.strftime("%Y%m%d-%H%M%S")
        with _progress() as progress:
            epoch_task = progress.add_task("epochs", total=config.epochs)
            batch_task = progress.add_task("batches", total=None)

            def on_step(step: int, total: int) -> None:
                progress.update(batch_task, completed=step, total=total)

            def on_epoch(result: EpochResult) -> None:
                m = result.metrics
                progress.update(epoch_task, completed=result.epoch)
                progress.console.print(
                    f"epoch {result.epoch:>3}  train_loss {m['train_loss']:.4f}  "
                    f"val_loss {m['val_loss']:.4f}  val_accuracy {m['val_accuracy']:.4f}  "
                    f"lr {m['lr']:.2e}  {m['epoch_seconds']:.1f}s",
                    soft_wrap=True,
                )

            summary = train(config, workdir, callback=on_epoch, on_step=on_step)
    except (ConfigError, DatasetError, UserError) as error:
        fail(str(error))
    final = summary.history[-1]
    line = {
        **final,
        "best_epoch": summary.best_epoch,
        f"best_{config.objective}": summary.best_value,
        "stopped_by": summary.stopped_by,
        "checkpoint": str(summary.best_checkpoint),
    }
    sys.stdout.write(json.dumps(line) + "\n")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="image files, or folders of them")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory (automl pull)")],
    top: Annotated[int, typer.Option(min=1, help="also print the top-k classes")] = 1,
) -> None:
    """Print label and probability for each image, one JSON object per line."""
    from workers.datasets import DatasetError, image_files
    from workers.predict import load_checkpoint, predict_images

    try:
        files = image_files(images)  # a folder: every image under it, so no shell glob limit
        loaded = load_checkpoint(checkpoint)
        predictions = predict_images(loaded, files)
    except (DatasetError, FileNotFoundError, ValueError) as error:
        fail(str(error))
    for item in predictions:
        ranked = sorted(item.probabilities.items(), key=lambda kv: -kv[1])[:top]
        row: dict[str, Any] = {
            "image": str(item.path),
            "label": item.label,
            "probability": round(item.probability, 6),
        }
        if top > 1:
            row["top"] = [{"label": k, "probability": round(v, 6)} for k, v in ranked]
        sys.stdout.write(json.dumps(row) + "\n")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory (automl pull)")],
    out: Annotated[Path, typer.Option(help="the .onnx file to write")] = Path("model.onnx"),
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's)")] = None,
) -> None:
    """Export a checkpoint to ONNX for serving: uint8 images in, probabilities out, checked
    against PyTorch with onnxruntime before the file is written."""
    from workers.export import export_onnx

    if out.is_dir():
        fail(f"--out {out} is a directory; give a file name such as {out / 'model.onnx'}")
    try:
        done = export_onnx(checkpoint, out, opset)
    except (FileNotFoundError, ValueError) as error:  # ExportError is a ValueError
        fail(str(error))
    size = done.img_size
    Console().print(
        f"wrote {done.path} (ONNX opset {done.opset}): input image uint8 [N, 3, {size}, {size}], "
        f"outputs probabilities and logits [N, {len(done.classes)}]; onnxruntime matches PyTorch "
        f"within {done.max_difference:.1e}; classes and preprocessing are in its metadata",
        highlight=False, soft_wrap=True,
    )


StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="database URL (default: SQLite under ./automl-data)"),
]
ArtifactsOpt = Annotated[
    str | None, typer.Option("--artifacts", help="artifact store path (default: automl-data/artifacts)")
]
RayOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Ray cluster address (default: local Ray)")
]


def settings_from(
    storage: str | None = None, artifacts: str | None = None, ray_address: str | None = None
) -> Any:
    from pydantic import ValidationError

    from automl.settings import Settings

    overrides = {"database_url": storage, "artifacts": artifacts, "ray_address": ray_address}
    try:
        return Settings.model_validate({k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        fail("; ".join(f"--storage / AUTOML_DATABASE_URL: {e['msg'].removeprefix('Value error, ')}"
                       if e["loc"] == ("database_url",) else f"{e['loc']}: {e['msg']}"
                       for e in error.errors()))


@app.command()
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
    from automl.execute import execute_job, resume_hint
    from automl.job import JobError, check_dataset, check_pretrained_weights
    from automl.live import LiveView
    from automl.spec import SpecError, check_job_id, load_spec, new_job_id
    from storage.jobs import JobStore, UnknownJob
    from storage.optuna_storage import DatabaseUnavailable, redact

    try:
        spec = load_spec(job_file)
        if job_id is not None:
            check_job_id(job_id)
    except SpecError as error:
        fail(str(error))
    try:
        check_dataset(spec)  # before the job row: a bad dataset leaves nothing behind
        check_pretrained_weights(spec)
        store = JobStore(settings.storage_url, connect_seconds=10)
        created = True
        if job_id is None:
            job_id = new_job_id(spec.name)
            store.submit(job_id, spec.name, spec.model_dump(mode="json"), state="running")
        else:
            try:
                resumed = store.resume(job_id, "foreground")
            except UnknownJob:
                store.submit(job_id, spec.name, spec.model_dump(mode="json"), state="running")
            else:
                created = False
                err.print(f"resuming job {job_id}", highlight=False)
                if resumed.spec != spec.model_dump(mode="json"):
                    err.print(f"[yellow]warning:[/] {escape(str(job_file))} differs from the spec "
                              f"job {job_id} started with; the job keeps its own", highlight=False)
    except (DatabaseUnavailable, JobError) as error:
        fail(str(error))
    err.print(
        f"job [bold]{job_id}[/]: {spec.budget.n_trials} trials x {spec.budget.max_epochs} epochs, "
        f"{spec.max_concurrent_trials} at a time; study {job_id} in {redact(settings.storage_url)}",
        highlight=False,
        soft_wrap=True,
    )
    view = LiveView(
        job_id, spec.budget.n_trials, spec.objective.maximize, spec.objective.metric,
        spec.budget.time_limit, console=err,
    )
    job_path = str(job_file.resolve())
    try:
        with view:
            outcome = execute_job(job_id, settings, store, events=view, job_file=job_path,
                                  connect_seconds=10)
    except JobError as error:  # refused up front (e.g. resources no node has): leave no trace
        if created:
            store.discard(job_id)
        err.print()  # off a terminal the live view's last line has no line break
        fail(str(error))
    except DatabaseUnavailable as error:
        fail(str(error))
    except KeyboardInterrupt:
        err.print(f"\ninterrupted: job {job_id} stopped (its trials are kept); "
                  f"{resume_hint(job_id, job_path)}", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(130) from None
    print_outcome(outcome, spec.objective.metric, settings)
    if outcome.state != "succeeded":
        raise typer.Exit(1)


@app.command("run-stored", hidden=True)
def run_stored(job_id: str) -> None:
    """Run a claimed job (the runner starts one of these per job)."""
    from automl.execute import HeartbeatLost, execute_job
    from automl.settings import Settings
    from storage.jobs import JobStore

    settings = Settings()
    try:
        outcome = execute_job(job_id, settings, JobStore(settings.storage_url),
                              dataset_roots=settings.dataset_roots)
    except HeartbeatLost as error:
        err.print(str(error), highlight=False, soft_wrap=True)
        raise typer.Exit(75) from None  # EX_TEMPFAIL: the job is resumed, not failed
    err.print(f"job {job_id} {outcome.state}: {outcome.error or ''}", highlight=False)


def print_outcome(outcome: Any, metric: str, settings: Any) -> None:
    from storage.optuna_storage import redact

    counts = outcome.counts
    out = Console()
    err.print()
    out.print(
        f"job {outcome.job_id} {outcome.state} in {outcome.elapsed:.0f}s: "
        f"{counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('fail', 0)} failed",
        highlight=False,
    )
    if outcome.state != "succeeded":
        out.print(f"error: {outcome.error}", highlight=False, soft_wrap=True)
        return
    test = outcome.test_metrics
    out.print(
        f"best trial {outcome.best_trial}: {metric} {outcome.best_value:.4f} (validation), "
        f"test accuracy {test.get('test_accuracy', float('nan')):.4f} on "
        f"{test.get('test_images', 0)} held-out images",
        highlight=False,
        soft_wrap=True,
    )
    t = outcome.timings
    out.print(
        f"orchestration: ray start {t.get('ray_start', 0):.1f}s, database {t.get('database', 0):.1f}s, "
        f"test evaluation + publish {t.get('publish', 0):.1f}s",
        highlight=False,
    )
    out.print(
        f"checkpoint: Optuna artifacts of trial {outcome.best_trial} in {settings.artifacts_path}",
        highlight=False, soft_wrap=True,
    )
    flags = _storage_flags(settings)
    out.print(f"  pull it:   automl pull {outcome.job_id} --out model/{flags}", highlight=False,
              soft_wrap=True)
    out.print("  predict:   automl predict --checkpoint model/ IMAGE...", highlight=False)
    out.print(f"  dashboard: automl dashboard{flags}   (optuna-dashboard on "
              f"{redact(settings.storage_url)})", highlight=False, soft_wrap=True)


def _storage_flags(settings: Any) -> str:
    from automl.settings import Settings

    default = Settings()
    flags = ""
    if settings.storage_url != default.storage_url:
        flags += f" --storage {settings.storage_url}"
    if settings.artifacts_path != default.artifacts_path:
        flags += f" --artifacts {settings.artifacts_path}"
    return flags


ApiOpt = Annotated[
    str | None,
    typer.Option("--api", help="automl API URL (default: $AUTOML_API_URL; none = local storage)"),
]


def backend(api: str | None, storage: str | None = None, artifacts: str | None = None) -> Any:
    """The API client when an API is configured, else the job service on the local storage."""
    settings = settings_from(storage, artifacts)
    url = api or settings.api_url
    if url:
        from automl.client import ApiClient

        return ApiClient(url, settings.api_token)
    from automl.service import JobService
    from storage.jobs import JobStore

    return JobService(settings, JobStore(settings.storage_url, connect_seconds=5))


def _user_errors() -> tuple[type[BaseException], ...]:
    from automl.client import ApiError
    from automl.publish import PullError
    from automl.service import NotReady
    from automl.spec import SpecError
    from storage.jobs import JobConflict, UnknownJob
    from storage.optuna_storage import DatabaseUnavailable

    return (ApiError, PullError, NotReady, SpecError, JobConflict, UnknownJob,
            DatabaseUnavailable, UserError)


@app.command()
def submit(
    job_file: Annotated[Path, typer.Argument(help="job spec (YAML)")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Queue a search job; a runner (`automl runner`) picks it up. Prints the job id."""
    from automl.spec import load_spec

    try:
        job = backend(api, storage).submit(load_spec(job_file))
    except _user_errors() as error:
        fail(str(error))
    err.print(f"submitted {job['id']} ({job['state']}); watch it: automl status {job['id']} --watch",
              highlight=False, soft_wrap=True)
    Console().print(job["id"], highlight=False)


@app.command("list")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """List jobs, newest first."""
    from rich.table import Table

    from storage.models import JOB_STATES

    if state is not None and state not in JOB_STATES:
        fail(f"--state {state!r} is not one of {', '.join(JOB_STATES)}")
    try:
        page = backend(api, storage).list_jobs(state, limit, 0)
    except _user_errors() as error:
        fail(str(error))
    # one line per job, whole, also when piped (rich wraps a table to 80 columns off a terminal)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("job", "state", "trials c/p/f of n", "best", "created (UTC)"):
        table.add_column(name, no_wrap=True)
    for job in page["jobs"]:
        t, best = job["trials"], job["best"]
        table.add_row(
            job["id"], job["state"], f"{t['complete']}/{t['pruned']}/{t['failed']} of {t['budget']}",
            "-" if best["value"] is None else f"{best['value']:.4f} (trial {best['trial']})",
            (job["created_at"] or "")[:16].replace("T", " "),
        )
    out = Console()
    if not out.is_terminal:
        out = Console(width=1000)
    out.print(table)
    out.print(f"{len(page['jobs'])} of {page['total']} job(s)", highlight=False)


@app.command()
def status(
    job: Annotated[str, typer.Argument(help="job id")],
    watch: Annotated[bool, typer.Option("--watch", help="follow until the job finishes")] = False,
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """A job's state, trial counts, best so far and dashboard link."""
    from rich.live import Live

    try:
        source = backend(api, storage)
        view = source.get(job)
        if watch:
            # transient: the final panel below is printed once, to stdout, terminal or not
            with Live(_status_panel(view), console=err, refresh_per_second=1,
                      transient=True) as live:
                while view["state"] in ("queued", "running"):
                    time.sleep(2)
                    view = source.get(job)
                    live.update(_status_panel(view))
    except _user_errors() as error:
        fail(str(error))
    Console().print(_status_panel(view))
    if view["state"] in ("failed", "cancelled"):
        raise typer.Exit(1)


def _status_panel(view: dict[str, Any]) -> Any:
    from rich.text import Text

    t, best = view["trials"], view["best"]
    stopping = view["cancel_requested"] and view["state"] == "running"
    lines = [
        f"job {view['id']}: {view['state']}" + (" (cancel requested)" if stopping else ""),
        f"trials: {t['running']} running, {t['complete']} complete, {t['pruned']} pruned, "
        f"{t['failed']} failed, budget {t['budget']}",
        "best so far: -" if best["value"] is None else
        f"best so far: trial {best['trial']}, {view['objective']} {best['value']:.4f}",
        f"dashboard: {view['dashboard']}",
    ]
    if view.get("test_metrics"):
        lines.append(f"test accuracy: {view['test_metrics'].get('test_accuracy', float('nan')):.4f}")
    if view.get("error"):
        lines.append(f"error: {view['error']}")
    return Text("\n".join(lines))


@app.command()
def cancel(
    job: Annotated[str, typer.Argument(help="job id")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Cancel a job: a queued one at once, a running one as soon as its runner sees it."""
    try:
        view = backend(api, storage).cancel(job)
    except _user_errors() as error:
        fail(str(error))
    note = "cancelled" if view["state"] == "cancelled" else "cancel requested; trials stopping"
    Console().print(f"job {job}: {note}", highlight=False)


@app.command()
def resume(
    job: Annotated[str, typer.Argument(help="job id")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Queue a failed or cancelled job again: a runner resumes it where it stopped."""
    try:
        view = backend(api, storage).resume(job)
    except _user_errors() as error:
        fail(str(error))
    Console().print(f"job {job}: {view['state']}; a runner resumes it (watch it: automl status "
                    f"{job} --watch)", highlight=False, soft_wrap=True)


@app.command()
def pull(
    job: Annotated[str, typer.Argument(help="job id")],
    out: Annotated[Path, typer.Option(help="directory to write the best checkpoint into")],
    api: ApiOpt = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Download the best trial's checkpoint (and its test report) into --out."""
    from automl.publish import pull as pull_best
    from storage.jobs import JobStore
    from storage.optuna_storage import optuna_storage

    settings = settings_from(storage, artifacts)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a directory (created if missing)")
    try:
        if api or settings.api_url:
            written = backend(api, storage, artifacts).pull(job, out)
        else:
            _require_published(JobStore(settings.storage_url, connect_seconds=5), job)
            written = pull_best(
                optuna_storage(settings.storage_url, retry_seconds=5),
                settings.artifacts_path,
                job,
                out,
            )
    except _user_errors() as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot write to --out {out}: {error.strerror or error}")
    files = ", ".join(sorted(p.name for p in written.iterdir() if not p.name.startswith(".")))
    Console().print(f"wrote {written}: {files}", highlight=False, soft_wrap=True)


def _require_published(store: Any, job_id: str) -> None:
    """A job that has not succeeded has nothing to pull; one with no job row (a study written
    by other means) is looked up by its study alone."""
    from automl.service import NotReady
    from storage.jobs import UnknownJob

    try:
        state = store.get(job_id).state
    except UnknownJob:
        return
    if state != "succeeded":
        raise NotReady(f"job {job_id} is {state}: it has no published best trial yet")


def require_free_port(host: str, port: int, option: str) -> None:
    """Say which port is taken before anything starts, rather than a bind error halfway."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        fail(f"cannot listen on {host}:{port} ({error.strerror}); choose another with {option}")


@app.command()
def dashboard(
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
) -> None:
    """Serve optuna-dashboard over the jobs' studies and their artifacts."""
    from automl.dashboard import dashboard_server
    from storage.optuna_storage import redact

    settings = settings_from(storage, artifacts)
    require_free_port(host, port, "--port")
    server = dashboard_server(settings, host, port)
    gate = " (sign in: any user name, AUTOML_API_TOKEN as password)" if settings.api_token else ""
    err.print(f"optuna-dashboard for {redact(settings.storage_url)} on http://{host}:{port}/{gate}",
              highlight=False)
    server.serve_forever()


@app.command()
def serve(
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    dashboard_port: Annotated[int, typer.Option(help="optuna-dashboard port")] = 8080,
) -> None:
    """The REST API and optuna-dashboard for the same storage, in one process."""
    import uvicorn

    from automl.api import create_app
    from automl.dashboard import serve_in_background
    from storage.optuna_storage import DatabaseUnavailable, redact

    settings = settings_from(storage, artifacts)
    require_free_port(host, port, "--port")
    require_free_port(host, dashboard_port, "--dashboard-port")
    if "dashboard_url" not in settings.model_fields_set:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        settings = settings.model_copy(update={"dashboard_url": f"http://{shown}:{dashboard_port}"})
    try:
        api = create_app(settings, connect_seconds=10)
    except DatabaseUnavailable as error:
        fail(str(error))
    serve_in_background(settings, host, dashboard_port)
    token = "token required" if settings.api_token else "no token (set AUTOML_API_TOKEN)"
    gate = " (the token as password)" if settings.api_token else ""
    err.print(
        f"automl API on http://{host}:{port} ({token}), docs at /docs; optuna-dashboard on "
        f"{settings.dashboard_url}{gate}; storage {redact(settings.storage_url)}",
        highlight=False, soft_wrap=True,
    )
    uvicorn.run(api, host=host, port=port, log_level="warning")


@app.command()
def runner(
    max_jobs: Annotated[int, typer.Option(min=1, help="jobs to run at once")] = 1,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    ray_address: RayOpt = None,
    until_idle: Annotated[bool, typer.Option(help="exit once no job is queued or running")] = False,
    health_file: Annotated[
        Path | None, typer.Option(help="touched on every pass of the loop (a liveness probe)")
    ] = None,
) -> None:
    """Claim queued jobs and run them on the Ray cluster, each in its own process."""
    import logging

    from automl.runner import Runner
    from storage.optuna_storage import DatabaseUnavailable

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    settings = settings_from(storage, artifacts, ray_address)
    own_ray_auth(settings.ray_address)
    try:
        worker = Runner(settings, max_jobs=max_jobs, health_file=health_file)
    except DatabaseUnavailable as error:
        fail(str(error))
    try:
        worker.run(until_idle=until_idle)
    except KeyboardInterrupt:
        worker.stop.set()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def main() -> None:
    import logging
    import warnings

    import optuna

    # Optuna's per-trial INFO lines and experimental-feature notes would drown the live view.
    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    app()


if __name__ == "__main__":
    main()
