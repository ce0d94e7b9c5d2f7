"""The report as one self-contained HTML page: tables, and its charts as PNGs inlined as
base64 data URIs (matplotlib, Agg), so it opens offline and travels as one file."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from workers.evaluate.page import img, png, table, write_page

CHART_FILES = {"reliability": "reliability.png", "robustness": "robustness.png"}
MAX_CURVES = 20  # classes drawn on the ROC and PR charts; the table has them all

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.charts img { max-width: 100%; margin: 0.5em 0; }
.note { color: #555; }
.worst { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 1em; }
.worst figure { margin: 0; font-size: 0.85em; }
.worst img { width: 100%; image-rendering: pixelated; }
"""


def write_html(report: dict[str, Any], path: Path, charts: Path | None = None) -> Path:
    """Write the page atomically: a temporary file beside `path`, renamed over it when whole.
    `charts`: a folder that also gets the calibration and robustness charts as PNG files
    (`CHART_FILES`; optuna-dashboard previews a study's PNG artifacts), drawn once for both."""
    pngs = chart_pngs(report)
    page = render(report, pngs)
    write_page(page, path)
    if charts is not None:
        for name, file_name in CHART_FILES.items():
            if name in pngs:
                (charts / file_name).write_bytes(pngs[name])
    return path


def chart_pngs(report: dict[str, Any]) -> dict[str, bytes]:
    """Every chart of the page as PNG bytes, by name (robustness only when it was scored)."""
    figures = {"confusion": _confusion(report), "roc": _curves(report, "roc"),
               "pr": _curves(report, "pr"), "reliability": _reliability(report["calibration"])}
    if report["robustness"] is not None:
        figures["robustness"] = _robustness_chart(report["robustness"])
    return {name: png(figure) for name, figure in figures.items()}


def render(report: dict[str, Any], pngs: dict[str, bytes] | None = None) -> str:
    """The page's HTML (a report as `Report.to_dict()` gives it; `pngs`: its charts, drawn)."""
    pngs = pngs if pngs is not None else chart_pngs(report)
    title = f"Evaluation: {report['backbone']} on {report['dataset']} ({report['split']})"
    parts = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='note'>checkpoint {escape(report['checkpoint'])}; {report['images']} "
        f"images; {len(report['classes'])} classes; {report['seconds']:.1f} s</p>",
    ]
    if report["absent_classes"]:
        parts.append(f"<p class='note'>No images of the model's classes: "
                     f"{escape(', '.join(report['absent_classes']))}</p>")
    cis = report.get("confidence_intervals") or {}
    parts += ["<h2>Scores</h2>", table(
        ["metric", "value", "95% interval (bootstrap)"],
        [[k, v, _interval(cis.get(k))] for k, v in report["metrics"].items()]
        + [["ece", report["calibration"]["ece"], _interval(cis.get("ece"))]])]
    if report.get("against"):
        parts += _against(report["against"])
    parts += ["<h2>Per class</h2>", table(
        ["class", "precision", "recall", "f1", "auroc", "support"],
        [[r["class"], r["precision"], r["recall"], r["f1"], r["auroc"], r["support"]]
         for r in report["per_class"]])]
    parts += ["<div class='charts'>", img(pngs["confusion"], "confusion matrix"),
              img(pngs["roc"], "ROC curves"),
              img(pngs["pr"], "precision-recall curves"), "</div>"]
    parts += _calibration(report["calibration"], pngs["reliability"])
    if report["robustness"] is not None:
        parts += _robustness(report["robustness"], pngs["robustness"])
    if report.get("worst_errors"):
        parts += _worst(report["worst_errors"])
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def _against(against: dict[str, Any]) -> list[str]:
    images = f", {against['images']} images" if against.get("images") else ""
    rows = [[r["metric"], r["job"], r["new"], _interval(r), f"{r['difference']:+.4f}",
             r["verdict"]] for r in against["rows"]]
    note = ("worse / better: the difference is beyond 1.96 standard errors of the difference "
            "(both bootstraps), else within noise")
    if not against["job_intervals"]:
        note += ("; the job was published without intervals, so its scores count as exact and "
                 "a verdict is likelier than it should be")
    return [f"<h2>Against job {escape(against['job'])}</h2>",
            f"<p class='note'>its test split{images}; {escape(note)}</p>",
            table(["metric", "job", "new", "95% interval", "difference", "verdict"], rows)]


def _interval(ci: dict[str, Any] | None) -> str:
    return "" if ci is None else f"[{ci['low']:.4f}, {ci['high']:.4f}]"


def _calibration(cal: dict[str, Any], chart: bytes) -> list[str]:
    rows = [["ECE (15 bins)", cal["ece"]], ["NLL", cal["nll"]]]
    if cal["temperature"] is not None:
        rows += [["temperature", cal["temperature"]], ["ECE at the temperature",
                                                      cal["ece_calibrated"]],
                 ["NLL at the temperature", cal["nll_calibrated"]]]
    return ["<h2>Calibration</h2>",
            f"<p class='note'>temperature fitted on: {escape(cal['fitted_on'])}</p>",
            table(["", "value"], rows),
            "<div class='charts'>", img(chart, "reliability diagram"), "</div>"]


def _robustness(rob: dict[str, Any], chart: bytes) -> list[str]:
    severities = rob["severities"]
    accuracy = {(r["corruption"], r["severity"]): r["accuracy"] for r in rob["results"]}
    rows = [[name] + [accuracy[(name, s)] for s in severities] + [rob["relative_drop"][name]]
            for name in rob["relative_drop"]]
    rows.append(["mean"] + [""] * len(severities) + [rob["mean_relative_drop"]])
    return ["<h2>Robustness</h2>",
            f"<p class='note'>clean accuracy {rob['clean_accuracy']:.4f}; seed {rob['seed']}; "
            "relative drop = (clean - corrupted) / clean, mean over severities</p>",
            table(["corruption"] + [f"accuracy, severity {s}" for s in severities]
                   + ["relative drop"], rows),
            "<div class='charts'>", img(chart, "robustness"), "</div>"]


def _worst(errors: list[dict[str, Any]]) -> list[str]:
    """The most confidently wrong images, the heatmap of the predicted class blended in."""
    methods = ", ".join(dict.fromkeys(e["method"] for e in errors))
    figures = []
    for n, e in enumerate(errors, 1):
        caption = f"{e['true']} \u2192 {e['predicted']} ({e['confidence']:.1%})"
        where = e["path"] if e["path"] is not None else f"image {e['index']}"
        figures.append(
            f"<figure><img alt='worst error {n}' title='{escape(where)}' "
            f"src='data:image/png;base64,{escape(e['overlay_png'])}'>"
            f"<figcaption>{escape(caption)}<br><span class='note'>{escape(where)}</span>"
            "</figcaption></figure>")
    return ["<h2>Worst errors</h2>",
            f"<p class='note'>the {len(errors)} most confidently wrong images, true \u2192 "
            f"predicted (confidence); heatmap of the predicted class: {escape(methods)}</p>",
            "<div class='worst'>", *figures, "</div>"]


def _confusion(report: dict[str, Any]) -> Figure:
    classes = report["classes"]
    size = min(max(4.0, 0.45 * len(classes) + 2), 14.0)  # 1000 classes: still a picture
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    matrix = report["confusion_matrix"]
    ax.imshow(matrix, cmap="Blues")
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 8 else 0)
        ax.set_yticks(range(len(classes)), classes)
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="white" if value > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return fig


def _curves(report: dict[str, Any], kind: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    x_key, y_key = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
    for name, curve in list(report["curves"][kind].items())[:MAX_CURVES]:
        ax.plot(curve[x_key], curve[y_key], label=name, linewidth=1)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title("ROC, one-vs-rest" if kind == "roc" else "Precision-recall, one-vs-rest")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _reliability(cal: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    sets = [("as trained", cal["bins"])]
    if cal["bins_calibrated"] is not None:
        sets.append((f"T = {cal['temperature']:.3f}", cal["bins_calibrated"]))
    for k, (label, bins) in enumerate(sets):  # side by side within each bin
        width = (bins[0]["upper"] - bins[0]["lower"]) / len(sets)
        kept = [b for b in bins if b["count"]]
        ax.bar([b["lower"] + k * width for b in kept],
               [b["accuracy"] for b in kept], width=width, align="edge", alpha=0.7,
               label=label, edgecolor="black", linewidth=0.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {cal['ece']:.3f})")
    ax.legend(fontsize=8)
    return fig


def _robustness_chart(rob: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    names = list(rob["relative_drop"])
    severities = rob["severities"]
    accuracy = {(r["corruption"], r["severity"]): r["accuracy"] for r in rob["results"]}
    width = 0.8 / len(severities)
    for k, severity in enumerate(severities):
        ax.bar([i + k * width for i in range(len(names))],
               [accuracy[(n, severity)] for n in names], width=width,
               label=f"severity {severity}")
    ax.axhline(rob["clean_accuracy"], color="black", linestyle="--", linewidth=1, label="clean")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy under corruptions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
