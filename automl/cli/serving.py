"""`automl serve-model`: a published model behind HTTP (onnxruntime, FastAPI, uvicorn)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from automl.cli.common import err, fail, require_free_port, settings_from

if TYPE_CHECKING:
    from serving.watch import Watch
    from storage.monitoring import MonitorStore

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0


def serve_model(
    model: Annotated[str, typer.Argument(
        metavar="NAME_OR_FOLDER",
        help="a model's name in the model repository, a model folder of it (its latest "
             "version), or any folder holding model.onnx")],
    name: Annotated[str | None, typer.Option(
        help="served name (default: the repository's model name, else the folder's)")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8001,
    max_batch: Annotated[int | None, typer.Option(
        min=1, help=f"most images in one batch (default: config.pbtxt's max_batch_size, "
                    f"else {DEFAULT_MAX_BATCH})")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(
        min=0, help="longest a batch waits for more images after its first (default: "
                    f"config.pbtxt's max_queue_delay_microseconds, else {DEFAULT_MAX_WAIT_MS})")
    ] = None,
    repository: Annotated[Path | None, typer.Option(
        help="the model repository (default: AUTOML_HOME/models)")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="onnxruntime threads (default: the CPUs this process may use)")] = None,
    max_queue: Annotated[int, typer.Option(
        min=1, help="requests waiting for a batch before new ones get 503")] = 1024,
    max_body_mb: Annotated[float, typer.Option(
        min=0.001, help="largest request body, in MB")] = 20.0,
    monitoring: Annotated[bool, typer.Option(
        "--monitoring/--no-monitoring", help="record predictions and feedback in the "
        "project's database ($AUTOML_DATABASE_URL, else the SQLite file under AUTOML_HOME) "
        "for `automl monitor`")] = True,
    check_seconds: Annotated[float, typer.Option(
        min=1, help="how often the server judges the window now filling for its "
        "automl_monitor_alert gauge")] = 60.0,
) -> None:
    """Serve a model: KServe v2 protocol, POST /predict, POST /feedback, Prometheus /metrics.
    Every route but /v2/health/* needs `Authorization: Bearer $AUTOML_API_TOKEN` when it is
    set."""
    import logging

    import uvicorn

    from serving.app import create_app
    from serving.model import ServedModel
    from serving.resolve import resolve

    settings = settings_from()
    found = resolve(model, repository or settings.home / "models", name)
    loaded = ServedModel(found.path, threads)
    batch = max_batch or found.max_batch or DEFAULT_MAX_BATCH
    wait = max_wait_ms if max_wait_ms is not None else (
        found.max_wait_ms if found.max_wait_ms is not None else DEFAULT_MAX_WAIT_MS)
    require_free_port(host, port, "--port")
    recorder, watch = None, None
    if monitoring:
        recorder, watch = _monitoring(settings.storage_url, found.path.parent, found.name,
                                      found.version, check_seconds)
    app = create_app(loaded, name=found.name, version=found.version, token=settings.api_token,
                     max_batch=batch, max_wait_ms=wait, max_queue=max_queue,
                     max_body_bytes=int(max_body_mb * 1024 * 1024), recorder=recorder,
                     watch=watch)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    token = "token required" if settings.api_token else "no token (set AUTOML_API_TOKEN)"
    if recorder is None:
        err.print("monitoring off (--no-monitoring)", highlight=False)
    else:
        watched = ("" if watch is not None else "; no reference.json beside the model, so no "
                   "drift checks (serve a version `automl deploy` wrote)")
        err.print(f"monitoring to {_where(settings.storage_url)}{watched}", highlight=False,
                  soft_wrap=True, markup=False)
    err.print(
        f"serving {found.name!r} version {found.version} ({len(loaded.classes)} classes, "
        f"{loaded.img_size} px) on http://{host}:{port} ({token}); batches of up to {batch}, "
        f"waiting up to {wait:g} ms; POST /predict, /v2/models/{found.name}/infer, /metrics",
        highlight=False, soft_wrap=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)


def _monitoring(database_url: str, folder: Path, name: str, version: str,
                check_seconds: float) -> tuple[MonitorStore, Watch | None]:
    """The store the server records to, and the monitor over it where the model has its
    reference (a repository version): thresholds from its automl.json."""
    import json

    from serving.monitor import Thresholds
    from serving.repository import META, REFERENCE
    from serving.watch import Watch
    from storage.monitoring import MonitorStore, StoreUnavailable

    try:
        store = MonitorStore(database_url, connect_seconds=10)
    except StoreUnavailable as error:
        fail(f"{error}; or serve without monitoring (--no-monitoring)")
    if not (folder / REFERENCE).is_file():
        return store, None
    try:
        reference = json.loads((folder / REFERENCE).read_text())
        meta = json.loads((folder / META).read_text()) if (folder / META).is_file() else {}
        thresholds = Thresholds.resolve(meta)
    except (ValueError, TypeError) as error:
        fail(f"{folder}: its monitoring reference or thresholds are damaged ({error}); "
             "deploy the model again")
    return store, Watch(store, name, version, reference, thresholds, check_seconds)


def _where(url: str) -> str:
    """The database, without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
