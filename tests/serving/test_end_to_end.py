"""A job's model deployed, served and monitored, as a user runs it: `automl deploy`, then
`automl serve-model` (a real uvicorn process recording to the embedded SQLite store), then
`automl monitor --check`: digits like the training images raise no alert, brightened ones raise
the input drift alert, and feedback labels give the confusion matrix of what was served."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from automl.cli import app
from automl.jobs.driver import run_job
from automl.search.spec import parse_spec
from automl.settings import Settings
from tests.support import AUTOML, DIGITS_JOB, free_port, wait_for
from workers.data.digits import ensure_digits

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
TOKEN = "e2e-token"
IMAGES = 90  # 9 per digit: enough for a window to be judged (min_predictions 30)


def digits(count: int) -> list[tuple[Path, str]]:
    """A seeded random draw of each digit's images: the training data's own distribution (the
    files in order are not: the later writers' digits are brighter)."""
    root = ensure_digits()
    rng = np.random.default_rng(1)
    chosen = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        files = sorted(folder.glob("*.png"))
        chosen += [(files[i], folder.name)
                   for i in sorted(rng.choice(len(files), count // 10, replace=False))]
    return chosen


def brightened(images: list[tuple[Path, str]], folder: Path) -> list[tuple[Path, str]]:
    """The same digits under a strong light: every pixel raised by 110 of 255."""
    folder.mkdir()
    out = []
    for i, (path, label) in enumerate(images):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16) + 110
        target = folder / f"{i}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(target)
        out.append((target, label))
    return out


@contextlib.contextmanager
def serving(name: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen([AUTOML, "serve-model", name, "--port", str(port),
                               "--check-seconds", "1"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is None and _ready(url), 120, f"serve-model {name}")
        yield url
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
        assert "Traceback" not in output, output


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/v2/health/ready").status_code == 200
    return False


def post(url: str, images: list[tuple[Path, str]]) -> list[dict[str, object]]:
    answers = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for start in range(0, len(images), 16):
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p, _ in images[start:start + 16]]
        response = httpx.post(f"{url}/predict", files=files, headers=auth, timeout=60)
        assert response.status_code == 200, response.text
        answers += response.json()
    return answers


def test_deploy_serve_and_monitor_a_job_catch_brightened_inputs(tmp_path: Path) -> None:
    home = tmp_path / "automl-data"
    spec = parse_spec({**DIGITS_JOB, "budget": {"n_trials": 2, "max_epochs": 3}})
    outcome = run_job(spec, "digits-e2e", Settings(home=home))
    assert outcome.state == "succeeded", outcome.error
    env = {k: v for k, v in os.environ.items() if k != "AUTOML_DATABASE_URL"}
    env.update(AUTOML_HOME=str(home), AUTOML_API_TOKEN=TOKEN)
    cli = CliRunner()
    for name in ("clean", "bright"):
        deployed = cli.invoke(app, ["deploy", "digits-e2e", "--name", name], env=env)
        assert deployed.exit_code == 0, deployed.output
        assert f"automl serve-model {name}" in deployed.output

    clean = digits(IMAGES)
    with serving("clean", env) as url:
        answers = post(url, clean)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for answer, (_, label) in zip(answers, clean, strict=True):
            sent = httpx.post(f"{url}/feedback", headers=auth,
                              json={"prediction_id": answer["prediction_id"], "label": label})
            assert sent.status_code == 200, sent.text
        report = httpx.get(f"{url}/models/clean/monitor", params={"windows": 1},
                           headers=auth).json()
    expected = np.zeros((10, 10), dtype=int)
    for answer, (_, label) in zip(answers, clean, strict=True):
        expected[int(label), int(str(answer["label"]))] += 1
    window = report["report"]["windows"][-1]
    assert window["predictions"] == IMAGES and report["alerts"] == []
    assert window["feedback"]["confusion"] == expected.tolist()
    assert window["feedback"]["accuracy"] == pytest.approx(np.trace(expected) / IMAGES)

    with serving("bright", env) as url:
        post(url, brightened(clean, tmp_path / "bright"))

        def firing() -> bool:
            metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            return ('automl_monitor_alert{check="input_drift.brightness",model="bright"} 1.0'
                    in metrics.text)

        wait_for(firing, 30, "the brightness alert on /metrics")

    quiet = cli.invoke(app, ["monitor", "clean", "--check", "--windows", "1"], env=env)
    assert quiet.exit_code == 0, quiet.output
    loud = cli.invoke(app, ["monitor", "bright", "--check", "--windows", "1"], env=env)
    assert loud.exit_code == 1, loud.output
    assert "ALERT input_drift.brightness:" in loud.output
    lines = [json.loads(line) for line in cli.invoke(
        app, ["monitor", "clean", "--json", "--windows", "1"], env=env).stdout.splitlines()]
    assert lines[0]["report"]["windows"][-1]["feedback"]["confusion"] == expected.tolist()
