"""The service end to end on real PostgreSQL: `automl serve` (live uvicorn + optuna-dashboard),
`automl runner` processes, the CLI against the API, and the dashboard in headless Chromium."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from optuna.trial import TrialState

from automl.settings import Settings
from storage.jobs import JobStore
from tests.support import AUTOML, free_port, load_study, proxy_to, trial_folders, wait_for
from workers.data.sources import load_index
from workers.predict import evaluate_checkpoint, load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
TOKEN = "s3cret-token"

TINY: dict[str, Any] = {
    "name": "svc",
    "dataset": {"source": "builtin:digits"},
    "budget": {"n_trials": 3, "max_epochs": 2},
    "max_concurrent_trials": 2,
    "resources": {"cpu": 1},
    "strategy": {"seed": 0},
    "evaluation": {"corruptions": False},
    "space": {
        "backbone": "test_resnet.r160_in1k", "pretrained": False, "img_size": 32,
        "augment": "none", "batch_size": 64, "freeze_stages": 0,
    },
}


@dataclass
class Service:
    api: str
    dashboard: str
    env: dict[str, str]
    home: Path
    database_url: str

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([AUTOML, *args], env=self.env, cwd=self.home, text=True,
                                capture_output=True, timeout=600)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def runner(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([AUTOML, "runner", "--until-idle", *args], env=self.env,
                                cwd=self.home, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.api}/jobs/{job_id}",
                             headers={"Authorization": f"Bearer {TOKEN}"})
        response.raise_for_status()
        payload: dict[str, Any] = response.json()
        return payload

    def write_spec(self, name: str, **changes: Any) -> Path:
        path = self.home / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**TINY, "name": name, **changes}))
        return path


def serve(database_url: str, home: Path) -> Iterator[Service]:
    import ray

    home.mkdir(parents=True, exist_ok=True)
    port, dash = free_port(), free_port()
    env = {
        **os.environ,
        "AUTOML_DATABASE_URL": database_url,
        "AUTOML_HOME": str(home / "automl-data"),
        "AUTOML_API_TOKEN": TOKEN,
        "AUTOML_API_URL": f"http://127.0.0.1:{port}",
        # the runners drive the session's Ray cluster instead of starting their own
        "AUTOML_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    server = subprocess.Popen(
        [AUTOML, "serve", "--port", str(port), "--dashboard-port", str(dash)],
        env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    service = Service(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dash}", env, home,
                      database_url)
    try:
        wait_for(lambda: httpx.get(f"{service.api}/healthz").status_code == 200, 120, "the API")
        yield service
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def service(pg_module_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from serve(pg_module_url, tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def finished_job(service: Service) -> str:
    """submit -> runner -> succeeded, through the CLI against the live API."""
    submitted = service.cli("submit", str(service.write_spec("svc")))
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert service.job(job_id)["state"] == "queued"
    runner = service.runner()
    output, _ = runner.communicate(timeout=600)
    assert runner.returncode == 0, output
    return job_id


def test_submit_runner_succeeded_download_predict(service: Service, finished_job: str) -> None:
    job = service.job(finished_job)
    assert job["state"] == "succeeded", job["error"]
    assert job["trials"]["complete"] + job["trials"]["pruned"] == 3
    assert job["best"]["trial"] is not None and job["dashboard"].startswith(service.dashboard)
    status = service.cli("status", finished_job)
    assert f"job {finished_job}: succeeded" in status.stdout
    assert "test accuracy" in status.stdout
    out = service.home / "pulled"
    service.cli("pull", finished_job, "--out", str(out))  # over the API: AUTOML_API_URL is set
    assert {"model.safetensors", "config.json", "automl.json"} <= {p.name for p in out.iterdir()}
    loaded = load_checkpoint(out)
    measured = evaluate_checkpoint(loaded, "test")["test_accuracy"]
    assert measured == pytest.approx(job["test_metrics"]["test_accuracy"], abs=1e-6)
    index = load_index(loaded.config.data)
    image = index.paths[int(index.split_indices["test"][0])]
    predicted = service.cli("predict", "--checkpoint", str(out), str(image))
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["label"] in loaded.classes


def test_trials_and_best_over_http(service: Service, finished_job: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    page = httpx.get(f"{service.api}/jobs/{finished_job}/trials", headers=headers).json()
    trials = page["trials"]
    assert page["total"] == 3 and len(trials) == 3
    assert all(t["state"] in ("complete", "pruned") for t in trials)
    # paged by number: a 10,000-trial study is never one response
    second = httpx.get(f"{service.api}/jobs/{finished_job}/trials", headers=headers,
                       params={"limit": 2, "offset": 2}).json()
    assert second["total"] == 3 and [t["number"] for t in second["trials"]] == [2]
    assert httpx.get(f"{service.api}/jobs/{finished_job}/trials", headers=headers,
                     params={"limit": 5000}).status_code == 422
    best = httpx.get(f"{service.api}/jobs/{finished_job}/best", headers=headers).json()
    assert best["trial"] == service.job(finished_job)["best"]["trial"]
    assert best["config"]["backbone"] == "test_resnet.r160_in1k"
    listed = service.cli("list", "--state", "succeeded")
    assert finished_job in listed.stdout


def test_cli_errors_are_clear(service: Service) -> None:
    missing = service.cli("status", "no-such-job", check=False)
    assert missing.returncode == 2 and "unknown job id 'no-such-job'" in missing.stderr
    bad = service.home / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "budget": {"n_trials": 0}}))
    refused = service.cli("submit", str(bad), check=False)
    assert refused.returncode == 2 and "budget.n_trials" in refused.stderr
    unauthorized = subprocess.run(
        [AUTOML, "list"], env={**service.env, "AUTOML_API_TOKEN": "wrong"}, text=True,
        capture_output=True,
    )
    assert unauthorized.returncode == 2 and "HTTP 401" in unauthorized.stderr


def test_dashboard_shows_the_job_in_chromium(
    service: Service, finished_job: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    link = service.job(finished_job)["dashboard"]
    # the dashboard's API can delete studies: with a token configured it wants the token too
    studies = f"{service.dashboard}/api/studies"
    assert httpx.get(f"{service.dashboard}/dashboard").status_code == 401
    assert httpx.get(studies, auth=("anyone", "wrong")).status_code == 401
    assert httpx.delete(f"{studies}/1").status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert finished_job in httpx.get(studies, headers=bearer).text
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        # a browser signs in with HTTP Basic: any user name, the token as password
        page = browser.new_page(viewport={"width": 1400, "height": 900},
                                http_credentials={"username": "me", "password": TOKEN})
        page.goto(f"{service.dashboard}/dashboard")
        page.get_by_text(finished_job).first.wait_for(timeout=30_000)
        page.goto(f"{link}/trials")
        page.get_by_text("Best Trial").first.wait_for(timeout=30_000)
        body = page.inner_text("body")
        for number in range(3):
            assert f"Trial {number}" in body
        assert "Intermediate Values" in body
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        page.goto(link)  # the study page lists the published artifacts
        page.get_by_text("Study Artifacts").first.wait_for(timeout=30_000)
        body = page.inner_text("body")
        assert "model.safetensors" in body
        for name in ("evaluation.html", "evaluation.json", "reliability.png"):
            assert name in body  # the published model's evaluation, beside it
        page.goto(f"{link}/note")  # the model card is the study's note
        page.get_by_text(f"Model card: {finished_job}").first.wait_for(timeout=30_000)
        assert "Evaluation (test split" in page.inner_text("body")
        browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_two_runners_three_jobs_each_runs_once(service: Service) -> None:
    spec = {"budget": {"n_trials": 1, "max_epochs": 1}, "max_concurrent_trials": 1}
    jobs = [
        service.cli("submit", str(service.write_spec(f"pair{i}", **spec))).stdout.split()[-1]
        for i in range(3)
    ]
    runners = [service.runner(), service.runner()]
    outputs = [r.communicate(timeout=600)[0] for r in runners]
    assert all(r.returncode == 0 for r in runners), outputs
    store = JobStore(service.database_url)
    claimed_by = {}
    for job_id in jobs:
        assert service.job(job_id)["state"] == "succeeded"
        claims = [e for e in store.events(job_id) if e.kind in ("claimed", "resumed")]
        assert [e.kind for e in claims] == ["claimed"], [(e.kind, e.message) for e in claims]
        claimed_by[job_id] = claims[0].message
        study = load_study(service.database_url, job_id)
        assert len(study.trials) == 1
    assert len(set(claimed_by.values())) == 2  # both runners worked


def test_cancel_mid_job(service: Service) -> None:
    spec = service.write_spec("cancelme", budget={"n_trials": 40, "max_epochs": 3},
                              strategy={"seed": 0, "pruner": "none"})
    job_id = service.cli("submit", str(spec)).stdout.split()[-1]
    before = trial_folders()
    runner = service.runner()
    wait_for(lambda: service.job(job_id)["trials"]["complete"] >= 1, 300, "a finished trial")
    cancelled = service.cli("cancel", job_id)
    assert "cancel requested" in cancelled.stdout
    output, _ = runner.communicate(timeout=300)
    job = service.job(job_id)
    assert job["state"] == "cancelled", output
    study = load_study(service.database_url, job_id)
    assert 1 <= len(study.trials) < 40
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    assert trial_folders() - before == set()  # the trials the cancel stopped left none either


def test_a_database_outage_mid_job_loses_no_trial(pg_url: str, tmp_path: Path) -> None:
    """The driver's database goes away for 10 s while trials report (every connection dropped,
    new ones refused, as in a restart: through a proxy, the shared server stays up): the driver
    reconnects and retries; every trial is still counted exactly once."""
    import threading

    from sqlalchemy.engine import make_url

    from automl.jobs.driver import run_job
    from automl.jobs.outcome import JobOutcome
    from automl.search.spec import parse_spec

    spec = parse_spec({**TINY, "budget": {"n_trials": 4, "max_epochs": 3},
                       "strategy": {"seed": 0, "pruner": "none"}})
    result: dict[str, JobOutcome] = {}
    target = make_url(pg_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        settings = Settings(home=tmp_path / "automl-data", database_url=proxy.url_for(pg_url))
        thread = threading.Thread(
            target=lambda: result.update(out=run_job(spec, "pgoutage", settings)))
        thread.start()

        def reported() -> int:
            try:
                study = load_study(pg_url, "pgoutage")
            except KeyError:
                return 0
            return sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))

        wait_for(lambda: reported() >= 2, 300, "reports")
        proxy.cut()
        time.sleep(10)
        proxy.restore()
        thread.join(timeout=600)
    outcome = result["out"]
    assert outcome.state == "succeeded", outcome.error
    study = load_study(pg_url, "pgoutage")
    assert len(study.trials) == 4
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE, (trial.number, trial.state)
        assert sorted(trial.intermediate_values) == [1, 2, 3]
