"""The pieces of a self-contained HTML report page, shared by `automl evaluate`'s page and
`automl monitor`'s: charts as inline PNG data URIs (matplotlib, Agg), plain tables, and an
atomic write (a temporary file beside the page, renamed over it when whole)."""

from __future__ import annotations

import base64
import io
import os
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def write_page(page: str, path: Path) -> Path:
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # renamed once whole
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt='{escape(alt)}' src='data:image/png;base64,{encoded}'>"


def table(header: list[str], rows: list[list[Any]], digits: int = 4) -> str:
    """Cells escaped; None shows as -, floats with `digits` decimals."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v, digits)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))
