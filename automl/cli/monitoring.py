"""`automl monitor`: a served model's recent windows against its training reference and the
job's test scores (serving.monitor), as a table, JSON or an HTML page; `--check` for cron/CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from automl.cli.common import fail, out


def monitor(
    name: Annotated[str, typer.Argument(help="the served model's name in the repository")],
    repository: Annotated[Path | None, typer.Option(
        help="model repository `automl deploy` wrote (default: AUTOML_HOME/models)")] = None,
    database: Annotated[str | None, typer.Option(
        help="the database the model server records to (default: $AUTOML_DATABASE_URL, "
        "else the SQLite file under AUTOML_HOME)")] = None,
    window: Annotated[str, typer.Option(
        help="window length: 1h, 30m, 1d or seconds; whole hours read the rollups of every "
        "prediction, shorter windows the sampled ones")] = "1h",
    windows: Annotated[int, typer.Option(min=1, max=10_000, help="how many windows, the "
                                         "latest (still filling) last")] = 24,
    check: Annotated[bool, typer.Option(
        "--check", help="print each alert as one line and exit 1 when any fires, 0 otherwise "
        "(for cron or CI)")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the report, thresholds and alerts as one JSON document")] = False,
    html: Annotated[Path | None, typer.Option(
        help="also write the report as a self-contained HTML page with plots")] = None,
    psi: Annotated[float | None, typer.Option(
        help="PSI above which a distribution has drifted (default: automl.json's monitor "
        "section, else 0.2)")] = None,
    accuracy_drop: Annotated[float | None, typer.Option(
        help="how far accuracy or macro F1 from feedback may fall below the test score "
        "(default: automl.json, else 0.05)")] = None,
    min_predictions: Annotated[int | None, typer.Option(
        help="fewer predictions (labels, for the scores) in a window: not judged "
        "(default: automl.json, else 30)")] = None,
) -> None:
    """Compare a served model's recent traffic with its training reference: drift of the
    predicted classes, the confidences and the inputs (PSI), and accuracy from feedback labels
    against the job's test scores."""
    from pydantic import ValidationError

    from automl.settings import Settings
    from serving.monitor import Thresholds, monitor_report, parse_window
    from serving.monitor import check as judge
    from serving.repository import META, REFERENCE, version_dir
    from storage.monitoring import MonitorStore, StoreUnavailable

    try:
        settings = Settings.model_validate({} if database is None else {"database_url": database})
    except ValidationError as error:
        fail("; ".join(f"--database / AUTOML_DATABASE_URL: {e['msg'].removeprefix('Value error, ')}"
                       for e in error.errors()))
    try:
        parse_window(window)
    except ValueError as error:
        fail(f"--window: {error}")
    repository = repository if repository is not None else settings.home / "models"
    folder = version_dir(repository / name)
    if folder is None:
        fail(f"no model {name!r} in the model repository {repository} (automl deploy writes it)")
    reference = _read_json(folder / REFERENCE, f"{name} version {folder.name} has no monitoring "
                           f"reference ({folder / REFERENCE}); deploy it again")
    meta = _read_json(folder / META, None) if (folder / META).is_file() else {}
    try:
        thresholds = Thresholds.resolve(meta, psi=psi, accuracy_drop=accuracy_drop,
                                        min_predictions=min_predictions)
    except (ValueError, TypeError) as error:
        fail(f"thresholds: {error}")
    if html is not None and not html.parent.is_dir():
        fail(f"--html {html}: folder {html.parent} does not exist; create it first")
    try:
        store = MonitorStore(settings.storage_url, connect_seconds=10)
        try:
            report = monitor_report(store, name, reference, window=window, windows=windows,
                                    version=folder.name)
        finally:
            store.close()
    except StoreUnavailable as error:
        fail(str(error))
    alerts = judge(report, thresholds)
    if html is not None:
        from serving.monitor_html import write_html  # matplotlib: only for a page

        write_html(report, alerts, thresholds, html)
    if as_json:
        from dataclasses import asdict

        document = {"report": report, "thresholds": asdict(thresholds),
                    "alerts": [asdict(a) for a in alerts]}
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        _table(report)
        if html is not None:
            out.print(f"wrote {html}", highlight=False, markup=False, soft_wrap=True)
    if check:
        for alert in alerts:
            if not as_json:
                out.print(f"ALERT {alert.name}: {alert.message}", highlight=False, markup=False,
                          soft_wrap=True)
        raise typer.Exit(1 if alerts else 0)
    if alerts and not as_json:
        out.print(f"{len(alerts)} alert(s); --check prints them and exits 1", highlight=False,
                  markup=False, soft_wrap=True)


def _read_json(path: Path, missing: str | None) -> dict[str, Any]:
    if not path.is_file():
        fail(missing or f"{path} is missing")
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        fail(f"{path} is not readable JSON ({error})")
    if not isinstance(document, dict):
        fail(f"{path} is not a JSON object")
    return document


def _table(report: dict[str, Any]) -> None:
    ref = report["reference"]
    count = len(report["windows"])
    out.print(f"{report['model']} version {report['version']}: {count} "
              f"window{'s' if count != 1 else ''} of {report['window']}s; test accuracy "
              f"{_num(ref['test_accuracy'])}, macro F1 {_num(ref['test_f1'])}, mean confidence "
              f"{_num(ref['mean_confidence'])}",
              highlight=False, markup=False, soft_wrap=True)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("window (UTC)", "predictions", "sampled", "class PSI", "conf mean",
                   "conf PSI", "input PSI (worst)", "labels", "accuracy", "macro F1"):
        table.add_column(column)
    for entry in report["windows"]:
        classes, confidence = entry.get("classes") or {}, entry.get("confidence") or {}
        inputs = {f: v["psi"] for f, v in (entry.get("inputs") or {}).items()
                  if v["psi"] is not None}
        worst = max(inputs, key=lambda f: inputs[f]) if inputs else None
        scores = entry["feedback"]
        table.add_row(
            entry["start"], str(entry["predictions"]), str(entry["sampled"]),
            _num(classes.get("psi")), _num(confidence.get("mean")), _num(confidence.get("psi")),
            f"{_num(inputs[worst])} {worst}" if worst else "-", str(scores["labeled"]),
            _num(scores["accuracy"]), _num(scores["macro_f1"]))
    # one line a window, however narrow the terminal (cron mail, CI logs)
    Console(width=max(out.width, 160), highlight=False).print(table)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
