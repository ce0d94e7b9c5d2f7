"""`automl evaluate`: a summary table, one JSON document, an HTML page; bad input is one line,
exit code 2, and nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from automl.cli import app
from tests.workers.evaluate.test_dataset import digits_folder
from tests.workers.evaluate.tiny import train_tiny


@pytest.fixture(scope="module")
def checkpoint(isolated_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny-trial"))


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["evaluate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_summary_json_and_html_of_one_evaluation(checkpoint: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    code, stdout, stderr = run("--checkpoint", str(checkpoint), "--json", "--html", str(page),
                               "--seed", "4")
    assert code == 0, stderr
    report = json.loads(stdout)  # one JSON document, nothing else on stdout
    assert report["split"] == "test" and report["robustness"]["seed"] == 4
    assert len(report["worst_errors"]) == 12  # --worst's default
    assert page.read_text().count("data:image/png;base64,") == 5 + 12  # charts and overlays
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]

    code, stdout, stderr = run("--checkpoint", str(checkpoint), "--no-corruptions", "--worst",
                               "3")
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert f"accuracy {report['metrics']['accuracy']:.4f}" in text
    assert f"f1_macro {report['metrics']['f1_macro']:.4f}" in text
    assert f"ece at temperature {report['calibration']['ece_calibrated']:.4f}" in text
    assert "temperature fitted on the checkpoint's own val split" in text
    assert "corruption" not in text  # --no-corruptions
    assert "worst errors: 3; --html shows them" in text
    top = report["worst_errors"][0]  # the same top error, whatever K
    assert f"{top['true']} -> {top['predicted']} ({top['confidence']:.1%}): {top['path']}" in text

    new = digits_folder(tmp_path / "new [bold]data", ["0", "9"], per_class=5)
    code, stdout, stderr = run("--checkpoint", str(checkpoint), "--dataset", str(new),
                               "--worst", "0")
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert f"on {new}, split all" in text  # printed as it is, not read as rich markup
    assert "split all: 10 images" in text
    assert "no images of 8 of the model's classes: 1, 2, 3, 4, 5, 6, 7, 8" in text
    assert "worst corruptions (relative accuracy drop):" in text
    assert "mean corruption drop" in text
    assert "worst errors" not in text  # --worst 0


def test_bad_input_is_one_line_exit_2_and_nothing_written(
    checkpoint: Path, tmp_path: Path
) -> None:
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()

    def refused(*args: str) -> str:
        code, stdout, stderr = run("--html", str(page), *args)
        assert code == 2, (stdout, stderr)
        assert "Traceback" not in stderr and stdout == ""
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert list(page.parent.iterdir()) == []
        return " ".join(stderr.split())

    (tmp_path / "not-a-model").mkdir()
    assert "is not a checkpoint directory" in refused("--checkpoint", str(tmp_path / "not-a-model"))
    ckpt = ("--checkpoint", str(checkpoint))
    (tmp_path / "empty").mkdir()
    assert "has no class folders" in refused(*ckpt, "--dataset", str(tmp_path / "empty"))
    unknown = digits_folder(tmp_path / "unknown", ["3"], per_class=3)
    shutil.copytree(unknown / "3", unknown / "dog")
    assert "class 'dog' is not one of the model's 10 classes" in refused(
        *ckpt, "--dataset", str(unknown))
    broken = digits_folder(tmp_path / "broken", ["1", "2"], per_class=3)
    (broken / "2" / "zz.png").write_bytes(b"not a png at all")
    assert "zz.png" in refused(*ckpt, "--dataset", str(broken), "--no-corruptions")
    assert "--split 'everything' is not a split" in refused(*ckpt, "--split", "everything")
    assert "has no test images; use --split all" in refused(
        *ckpt, "--dataset", str(unknown.parent / "broken"), "--split", "test")
    code, _, stderr = run(*ckpt, "--html", str(page.parent))
    assert code == 2 and "is a directory; give a file name" in stderr
    code, _, stderr = run(*ckpt, "--html", str(tmp_path / "nowhere" / "r.html"))
    assert code == 2 and "does not exist; create it first" in stderr


def test_against_a_published_job_says_worse_or_within_noise(
    checkpoint: Path, tmp_path: Path
) -> None:
    import optuna

    from automl.jobs.publish import publish
    from automl.search import keys

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = str(tmp_path / "artifacts")
    flags = ["--storage", url, "--artifacts", store]
    code, stdout, stderr = run("--checkpoint", str(checkpoint), "--no-corruptions", "--json")
    assert code == 0, stderr
    job_report = json.loads(stdout)  # what a job publishes: its model on its test split
    assert set(job_report["confidence_intervals"]) >= {"accuracy", "f1_macro", "ece"}
    files = tmp_path / "publication"
    files.mkdir()
    (files / "evaluation.json").write_text(json.dumps(job_report))
    publish(optuna.create_study(storage=url, study_name="job-1"), store, files,
            {keys.BEST_TRIAL: 0})

    ckpt = ("--checkpoint", str(checkpoint), "--no-corruptions", "--against", "job-1", *flags)
    code, stdout, stderr = run(*ckpt)  # the same images: no difference at all
    assert code == 0, stderr
    text = " ".join(stdout.split())
    accuracy = job_report["metrics"]["accuracy"]
    low, high = (job_report["confidence_intervals"]["accuracy"][k] for k in ("low", "high"))
    assert f"accuracy {accuracy:.4f} [{low:.4f}, {high:.4f}]" in text
    assert "against job job-1 (its test split" in text
    assert f"accuracy {accuracy:.4f} {accuracy:.4f} [{low:.4f}, {high:.4f}] +0.0000 within noise" in text
    assert "worse" not in text and "better" not in text

    swapped = digits_folder(tmp_path / "swapped", ["0", "9"], per_class=40)
    (swapped / "0").rename(swapped / "zero")
    (swapped / "9").rename(swapped / "0")
    (swapped / "zero").rename(swapped / "9")  # every label wrong: a degraded set
    page = tmp_path / "report.html"
    code, stdout, stderr = run(*ckpt, "--dataset", str(swapped), "--json", "--html", str(page))
    assert code == 0, stderr  # worse is a finding, not a failure (issue 27 alerts)
    against = json.loads(stdout)["against"]
    assert against["job"] == "job-1" and against["job_intervals"] is True
    verdicts = {row["metric"]: row["verdict"] for row in against["rows"]}
    assert verdicts["accuracy"] == verdicts["f1_macro"] == "worse"
    assert "Against job job-1" in page.read_text()

    old = tmp_path / "old"  # published before evaluation.json: the study's test scores only
    old.mkdir()
    (old / "automl.json").write_text("{}")
    publish(optuna.create_study(storage=url, study_name="job-old"), store, old,
            {keys.BEST_TRIAL: 0, keys.TEST_METRICS: {"test_accuracy": accuracy, "test_f1": 0.5}})
    code, stdout, stderr = run(*ckpt[:4], "job-old", *flags)
    assert code == 0, stderr
    text = " ".join(stdout.split())
    assert "job job-old was published without intervals" in text
    assert "f1_macro 0.5000" in text and "nll" not in text.split("against job")[1]

    for job, said in (("job-2", "unknown job id 'job-2'"),):
        code, stdout, stderr = run(*ckpt[:4], job, *flags)
        assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, stderr
        assert said in " ".join(stderr.split())
    optuna.create_study(storage=url, study_name="job-running")
    code, stdout, stderr = run(*ckpt[:4], "job-running", *flags)
    assert code == 2 and "has no published best checkpoint yet" in " ".join(stderr.split())
