"""`automl evaluate`: one report on a checkpoint (scores, calibration, robustness), as a table,
JSON or a self-contained HTML page (workers/evaluate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from automl.cli.common import ArtifactsOpt, StorageOpt, err, fail, out, settings_from


def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint directory (automl pull)")],
    dataset: Annotated[str | None, typer.Option(
        help="ImageFolder dir, CSV manifest, parquet/arrow or builtin:digits, labels matched "
        "to the model's classes by name (default: the checkpoint's own dataset)")] = None,
    split: Annotated[str | None, typer.Option(
        help="test, val, train or all (default: test where the dataset has one, else all)")
    ] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print the whole report as one JSON document")] = False,
    html: Annotated[Path | None, typer.Option(
        help="also write the report as a self-contained HTML page")] = None,
    seed: Annotated[int, typer.Option(help="the corruptions' random seed")] = 0,
    corruptions: Annotated[bool, typer.Option(
        "--corruptions/--no-corruptions", help="score the corruption suite too")] = True,
    worst: Annotated[int, typer.Option(
        min=0, help="show the N most confidently wrong images, with a Grad-CAM heatmap of the "
        "predicted class (0: none)")] = 12,
    against: Annotated[str | None, typer.Option(
        help="a job id: compare with its published model's scores on its test split (worse, "
        "better or within noise, per score); the exit code stays 0 either way")] = None,
    storage: StorageOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Evaluate a checkpoint: accuracy, precision/recall/F1 with bootstrap intervals, AUROC,
    per-class scores, calibration (ECE, temperature), robustness to corruptions and the worst
    errors."""
    from workers.evaluate.dataset import SPLIT_CHOICES
    from workers.evaluate.report import evaluate as run_evaluation

    if split is not None and split not in SPLIT_CHOICES:
        fail(f"--split {split!r} is not a split; use one of {', '.join(SPLIT_CHOICES)}")
    if html is not None:
        if html.is_dir():
            fail(f"--html {html} is a directory; give a file name such as {html / 'report.html'}")
        if not html.parent.is_dir():
            fail(f"--html {html}: folder {html.parent} does not exist; create it first")
    reference = None if against is None else _published(against, storage, artifacts)
    with err.status("evaluating", spinner="dots"):
        report = run_evaluation(checkpoint, dataset, split, seed=seed, corruptions=corruptions,
                                worst=worst)
    document = report.to_dict()
    if reference is not None:
        document["against"] = _compared(document, reference)
    if html is not None:
        from workers.evaluate.html import write_html  # matplotlib: only for a page

        write_html(document, html)
    if as_json:
        sys.stdout.write(json.dumps(document) + "\n")
        return
    _summary(document, html is not None)
    if reference is not None:
        _against(document["against"])
    if html is not None:
        out.print(f"wrote {html}", highlight=False, markup=False, soft_wrap=True)


def _summary(report: dict[str, Any], page: bool) -> None:
    out.print(
        f"{report['backbone']} on {report['dataset']}, split {report['split']}: "
        f"{report['images']} images, {len(report['classes'])} classes, "
        f"{report['seconds']:.1f}s", highlight=False, markup=False, soft_wrap=True,
    )
    if report["absent_classes"]:
        absent = report["absent_classes"]
        out.print(f"no images of {len(absent)} of the model's classes: "
                  f"{', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}",
                  highlight=False, markup=False, soft_wrap=True)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("metric", "value", "95% interval"):
        table.add_column(name)
    cis = report["confidence_intervals"]
    for name, value in report["metrics"].items():
        table.add_row(name, _number(value), _interval(cis.get(name)))
    cal = report["calibration"]
    table.add_row("ece", _number(cal["ece"]), _interval(cis.get("ece")))
    if cal["temperature"] is not None:
        table.add_row("temperature", _number(cal["temperature"]))
        table.add_row("ece at temperature", _number(cal["ece_calibrated"]))
    rob = report["robustness"]
    if rob is not None:
        table.add_row("mean corruption drop", _number(rob["mean_relative_drop"]))
    out.print(table)
    out.print(f"temperature fitted on {cal['fitted_on']}"
              if cal["temperature"] is not None else f"temperature {cal['fitted_on']}",
              highlight=False, markup=False, soft_wrap=True)
    if rob is not None:
        _robustness(rob)
        worst = ", ".join(f"{name} {rob['relative_drop'][name]:.1%}" for name in rob["worst"][:3])
        out.print(f"worst corruptions (relative accuracy drop): {worst}", highlight=False,
                  markup=False, soft_wrap=True)
    _worst_errors(report["worst_errors"], page)


def _worst_errors(errors: list[dict[str, Any]], page: bool) -> None:
    if not errors:
        return
    shown = f"{len(errors)} shown in the HTML page" if page else f"{len(errors)}; --html shows them"
    out.print(f"worst errors: {shown}; the most confident (true -> predicted):", highlight=False,
              markup=False, soft_wrap=True)
    for e in errors[:3]:
        where = e["path"] if e["path"] is not None else f"image {e['index']}"
        out.print(f"  {e['true']} -> {e['predicted']} ({e['confidence']:.1%}): {where}",
                  highlight=False, markup=False, soft_wrap=True)


def _robustness(rob: dict[str, Any]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    severities = rob["severities"]
    for name in ["corruption", *(f"acc s{s}" for s in severities), "drop"]:
        table.add_column(name)
    accuracy = {(r["corruption"], r["severity"]): r["accuracy"] for r in rob["results"]}
    for name, drop in rob["relative_drop"].items():
        table.add_row(name, *(_number(accuracy[(name, s)]) for s in severities), f"{drop:.1%}")
    out.print(table)


def _published(job: str, storage: str | None, artifacts: str | None) -> dict[str, Any]:
    """The job's published scores (`automl.jobs.pull.published_evaluation`); an unknown job or
    one with nothing published is `pull`'s one-line error, exit 2."""
    from automl.jobs.pull import published_evaluation
    from storage.optuna_storage import optuna_storage

    settings = settings_from(storage, artifacts)
    studies = optuna_storage(settings.storage_url, retry_seconds=5)
    published: dict[str, Any] = published_evaluation(studies, settings.artifacts_path, job)
    return published


def _compared(report: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The report's `against` entry: the job's scores, and the verdict per score
    (`workers.evaluate.bootstrap.compare`: worse / better / within noise)."""
    from workers.evaluate.bootstrap import compare

    new = {**report["metrics"], "ece": report["calibration"]["ece"]}
    job_cis = reference["confidence_intervals"]
    return {**reference, "job_intervals": bool(job_cis),
            "rows": compare(new, report["confidence_intervals"], reference["metrics"], job_cis)}


def _against(against: dict[str, Any]) -> None:
    images = f", {against['images']} images" if against.get("images") else ""
    out.print(f"against job {against['job']} (its test split{images}):", highlight=False,
              markup=False, soft_wrap=True)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("metric", "job", "new", "95% interval", "difference", "verdict"):
        table.add_column(name)
    for row in against["rows"]:
        table.add_row(row["metric"], _number(row["job"]), _number(row["new"]),
                      _interval(row), f"{row['difference']:+.4f}", row["verdict"])
    out.print(table)
    if not against["job_intervals"]:
        out.print(f"job {against['job']} was published without intervals (before they "
                  "existed): its scores count as exact, so a verdict is likelier than it should be",
                  highlight=False, markup=False, soft_wrap=True)


def _interval(ci: dict[str, Any] | None) -> str:
    return "" if ci is None else f"[{ci['low']:.4f}, {ci['high']:.4f}]"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
