"""The HTML report opens offline in headless Chromium with every picture shown, and is
written whole or not at all."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support import open_offline_page
from workers.evaluate.html import render, write_html
from workers.evaluate.report import evaluate


@pytest.fixture(scope="module")
def report(checkpoint: Path) -> dict[str, Any]:
    return evaluate(checkpoint, device=torch.device("cpu")).to_dict()


def test_the_page_opens_offline_in_chromium_with_every_image(
    report: dict[str, Any], tmp_path: Path
) -> None:
    page_file = write_html(report, tmp_path / "report.html")
    text = page_file.read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text)  # nothing to fetch
    opened = open_offline_page(page_file, screenshot=tmp_path / "report.png")
    images, body, requests = opened.images, opened.body, opened.requests
    worst = report["worst_errors"]
    assert len(worst) == 12  # the default: the tiny model gets more than 12 wrong
    assert [alt for alt, _, _ in images] == [
        "confusion matrix", "ROC curves", "precision-recall curves", "reliability diagram",
        "robustness"] + [f"worst error {n}" for n in range(1, 13)]
    assert all(complete and width > 0 for _, complete, width in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    for words in ("Scores", "Per class", "Calibration", "Robustness", "gaussian_noise",
                  "relative drop", f"{report['metrics']['accuracy']:.4f}", "Worst errors",
                  f"{worst[0]['true']} \u2192 {worst[0]['predicted']} "
                  f"({worst[0]['confidence']:.1%})", worst[0]["method"]):
        assert words in body
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_page_is_written_whole_and_escapes_what_the_data_names(
    report: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "report.html"
    target.write_text("an older report")
    unfitted = {**report["calibration"], "temperature": None, "ece_calibrated": None,
                "nll_calibrated": None, "bins_calibrated": None, "fitted_on": "not fitted: no val"}
    worst = [{**e, "true": "<b>cat</b>", "path": "a&b.png"} for e in report["worst_errors"][:2]]
    odd = {**report, "dataset": "<script>alert(1)</script>", "robustness": None,
           "calibration": unfitted, "worst_errors": worst}
    write_html(odd, target)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no partial file left
    text = target.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert text.count("<img") == 4 + 2 and "Robustness" not in text
    assert "<b>" not in text and "&lt;b&gt;cat&lt;/b&gt;" in text and "a&amp;b.png" in text
    assert "Worst errors" not in render({**odd, "worst_errors": []})  # --worst 0
    assert "not fitted: no val" in text and "ECE at the temperature" not in text
    assert render(odd) == text
    with pytest.raises(KeyError):
        write_html({"backbone": "a report with no more in it"}, target)
    assert target.read_text() == text and len(list(tmp_path.iterdir())) == 1
