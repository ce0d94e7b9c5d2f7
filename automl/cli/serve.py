"""`automl serve`, `dashboard`, `runner`: the long-running parts of the service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from automl.cli.common import (
    ArtifactsOpt,
    RayOpt,
    StorageOpt,
    err,
    require_free_port,
    settings_from,
)
from automl.jobs.local_ray import own_ray_auth


def serve(
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    dashboard_port: Annotated[int, typer.Option(help="optuna-dashboard port")] = 8080,
) -> None:
    """The REST API and optuna-dashboard for the same storage, in one process."""
    import uvicorn

    from automl.service.server import GRACEFUL_SHUTDOWN_SECONDS, build, start_dashboard
    from storage.optuna_storage import redact

    settings = settings_from(storage, artifacts)
    require_free_port(host, port, "--port")
    require_free_port(host, dashboard_port, "--dashboard-port")
    if "dashboard_url" not in settings.model_fields_set:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        settings = settings.model_copy(update={"dashboard_url": f"http://{shown}:{dashboard_port}"})
    api, dashboard_server = build(settings, host, dashboard_port)
    start_dashboard(dashboard_server)
    token = "token required" if settings.api_token else "no token (set AUTOML_API_TOKEN)"
    gate = " (the token as password)" if settings.api_token else ""
    err.print(
        f"automl API on http://{host}:{port} ({token}), docs at /docs; optuna-dashboard on "
        f"{settings.dashboard_url}{gate}; storage {redact(settings.storage_url)}",
        highlight=False, soft_wrap=True,
    )
    uvicorn.run(api, host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)


def dashboard(
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
) -> None:
    """Serve optuna-dashboard over the jobs' studies and their artifacts."""
    from automl.service.dashboard import dashboard_server
    from storage.optuna_storage import optuna_storage, redact

    settings = settings_from(storage, artifacts)
    require_free_port(host, port, "--port")
    server = dashboard_server(settings, host, port, optuna_storage(settings.storage_url))
    gate = " (sign in: any user name, AUTOML_API_TOKEN as password)" if settings.api_token else ""
    err.print(f"optuna-dashboard for {redact(settings.storage_url)} on http://{host}:{port}/{gate}",
              highlight=False)
    server.serve_forever()


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
    """Claim queued jobs and run them on the Ray cluster, each in its own process. SIGTERM or
    Ctrl-C drains it: its jobs go back to the queue, resumable by the next runner at once (a
    second signal ends it at once)."""
    import logging
    import signal
    from types import FrameType

    settings = settings_from(storage, artifacts, ray_address)
    own_ray_auth(settings.ray_address)  # before anything imports Ray: its children inherit it
    from automl.jobs.runner import Runner

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    worker = Runner(settings, max_jobs=max_jobs, health_file=health_file)

    def drain(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        worker.stop.set()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    worker.run(until_idle=until_idle)
