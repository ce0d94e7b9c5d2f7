"""`automl monitor --html`: the report as one self-contained page, its plots PNGs inlined as
base64 data URIs (matplotlib, Agg), so it opens offline and travels as one file. Imported only
for a page: a serving node needs no matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from serving.monitor import Alert, Thresholds
from workers.evaluate.page import cell, img, png, table, write_page

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; margin: 0.5em 0; }
.alert { color: #a00; }
.note { color: #555; }
"""


def write_html(report: dict[str, Any], alerts: Sequence[Alert], thresholds: Thresholds,
               path: Path) -> Path:
    """Write the page atomically: a temporary file beside `path`, renamed over it when whole."""
    return write_page(render(report, alerts, thresholds), path)


def render(report: dict[str, Any], alerts: Sequence[Alert], thresholds: Thresholds) -> str:
    ref = report["reference"]
    title = f"Monitoring: {report['model']} version {report['version']}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>",
             f"<p class='note'>{len(report['windows'])} windows of {report['window']} s; "
             f"drift: {escape(report['measure'])}. Thresholds: "
             + escape(", ".join(f"{k} {v}" for k, v in asdict(thresholds).items())) + "</p>"]
    parts.append("<h2>Alerts</h2>")
    if alerts:
        parts.append("<ul>" + "".join(f"<li class='alert'>{escape(a.name)}: {escape(a.message)}"
                                      "</li>" for a in alerts) + "</ul>")
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2>Windows</h2>")
    header = ["window (UTC)", "predictions", "sampled", "class PSI", "conf mean", "conf PSI",
              *(f"{f} PSI" for f in _features(report)), "labels", "accuracy", "macro F1"]
    rows = []
    for w in report["windows"]:
        inputs = w.get("inputs") or {}
        rows.append([w["start"], w["predictions"], w["sampled"],
                     (w.get("classes") or {}).get("psi"), (w.get("confidence") or {}).get("mean"),
                     (w.get("confidence") or {}).get("psi"),
                     *(inputs.get(f, {}).get("psi") for f in _features(report)),
                     w["feedback"]["labeled"], w["feedback"]["accuracy"],
                     w["feedback"]["macro_f1"]])
    parts.append(table(header, rows, digits=3))
    parts.append(f"<p class='note'>Job's test scores: accuracy {cell(ref['test_accuracy'], 3)}, "
                 f"macro F1 {cell(ref['test_f1'], 3)}, mean confidence "
                 f"{cell(ref['mean_confidence'], 3)} ({cell(ref['test_images'], 3)} images).</p>")
    parts.append("<h2>Plots</h2>")
    parts.append(img(png(_drift(report, thresholds)), "drift over time"))
    parts.append(img(png(_volume(report)), "predictions and accuracy"))
    parts.append("</body></html>")
    return "".join(parts)


def _features(report: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for w in report["windows"]:
        seen.update(dict.fromkeys(w.get("inputs") or {}))
    return list(seen)


def _drift(report: dict[str, Any], thresholds: Thresholds) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    starts = [w["start"][5:16].replace("T", " ") for w in report["windows"]]
    x = range(len(starts))
    series = {"classes": [(w.get("classes") or {}).get("psi") for w in report["windows"]],
              "confidence": [(w.get("confidence") or {}).get("psi") for w in report["windows"]]}
    for feature in _features(report):
        series[feature] = [(w.get("inputs") or {}).get(feature, {}).get("psi")
                           for w in report["windows"]]
    for name, values in series.items():
        ax.plot(x, [float("nan") if v is None else v for v in values], marker="o", ms=3,
                label=name)
    ax.axhline(thresholds.psi, color="red", linestyle="--", linewidth=1, label="threshold")
    ax.set_xticks(list(x), starts, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("PSI")
    ax.set_title("Drift against the reference")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _volume(report: dict[str, Any]) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    starts = [w["start"][5:16].replace("T", " ") for w in report["windows"]]
    x = list(range(len(starts)))
    ax.bar(x, [w["predictions"] for w in report["windows"]], color="#9ab", label="predictions")
    ax.set_ylabel("predictions")
    ax.set_xticks(x, starts, rotation=45, ha="right", fontsize=7)
    twin = ax.twinx()
    accuracy = [w["feedback"]["accuracy"] for w in report["windows"]]
    twin.plot(x, [float("nan") if a is None else a for a in accuracy], color="black", marker="o",
              ms=3, label="accuracy (feedback)")
    test = report["reference"]["test_accuracy"]
    if test is not None:
        twin.axhline(test, color="green", linestyle="--", linewidth=1, label="test accuracy")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("accuracy")
    twin.legend(fontsize=7, loc="lower left")
    ax.set_title("Traffic and accuracy from feedback")
    return fig
