"""A job of the shape users run, through the real service, scaled down only in model size and
epoch time: does anything grow with the number of trials?

    automl-bench soak [--trials 200] [--images 10000] [--url URL] [--at 10,50,100,200]

(URL defaults to $AUTOML_TEST_DATABASE_URL, else the local test database; the soak works in a
fresh schema it drops afterwards, and in a fresh folder for everything else.) It starts a real
`automl serve` (token on) and a real `automl runner` (with its own local Ray, as an embedded
deployment has), generates an ImageFolder of `--images` small PNGs of 10 classes, and submits one
job over the API: `--trials` trials of the three tiny timm test backbones at 32 px, 2 at a time,
1-3 epochs each (successive halving from epoch 1). While it runs, a client polls
`GET /jobs/{id}` and the newest page of `GET /jobs/{id}/trials` as a dashboard would. Each time
the finished trials pass a mark of `--at` (and at the end) it records:

- disk: the job's Ray Tune run folder, TMPDIR (Ray's session folder included: every process of
  the soak gets its own TMPDIR), the artifact store, the decoded-image cache, the database;
- RSS of the job's driver, the runner and `automl serve`;
- per-trial time outside train/eval steps, median of the last 10 finished trials: a trial's
  wall time in the study (asked to told) minus the epochs' own `epoch_seconds`;
- p95 of the two GET routes since the last mark, and of the driver's own time per trial
  (`driver_ms`: ask, and each epoch's report + should_prune) over the last 10 trials.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import optuna
from PIL import Image
from sqlalchemy import create_engine, text

from automl.search import keys

TOKEN = "soak-token"
BACKBONES = ["test_resnet.r160_in1k", "test_convnext.r160_in1k", "test_efficientnet.r160_in1k"]


@dataclass(frozen=True)
class Row:
    finished: int
    run_mb: float
    tmp_mb: float
    artifacts_mb: float
    cache_mb: float
    database_mb: float
    driver_rss_mb: float
    runner_rss_mb: float
    serve_rss_mb: float
    overhead_s: float
    get_job_p95_ms: float
    get_trials_p95_ms: float
    ask_p95_ms: float
    report_prune_p95_ms: float
    end: bool = False  # measured once the job had ended


def spec(name: str, source: str, trials: int) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"source": source, "val_fraction": 0.1, "test_fraction": 0.1},
        "budget": {"n_trials": trials, "max_epochs": 3},
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1},
        "strategy": {"seed": 0, "pruner_options": {"min_resource": 1}},
        "space": {"backbone": BACKBONES, "pretrained": False, "img_size": 32, "augment": "none",
                  "batch_size": [64, 128], "freeze_stages": 0, "mixup_alpha": 0.0,
                  "cutmix_alpha": 0.0, "num_workers": 0},
    }


def write_dataset(root: Path, images: int, classes: int = 10, side: int = 36) -> Path:
    """`images` small PNGs, each class a colour plus noise (learnable, so SHA has work)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(classes, 3))
    for index in range(images):
        label = index % classes
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-60, 60, size=(side, side, 3))
        pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:06d}.png")
    return root


def run(url: str, trials: int = 200, images: int = 10_000,
        at: tuple[int, ...] = (10, 50, 100, 200)) -> list[Row]:
    root = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))  # short: Ray's socket paths
    try:
        with _schema(url) as (database_url, schema):
            return _soak(root, database_url, schema, url, trials, images, at)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _soak(root: Path, database_url: str, schema: str, admin_url: str, trials: int, images: int,
          at: tuple[int, ...]) -> list[Row]:
    data = write_dataset(root / "data", images)
    home, tmp, cache = root / "home", root / "tmp", root / "cache"
    tmp.mkdir()
    port, dashboard = _port(), _port()
    env = {**os.environ, "AUTOML_DATABASE_URL": database_url, "AUTOML_HOME": str(home),
           "AUTOML_CACHE_DIR": str(cache), "AUTOML_API_TOKEN": TOKEN, "TMPDIR": str(tmp),
           "RAY_TMPDIR": str(tmp),  # Ray's session folder, logs and all, in it too
           "AUTOML_DATASET_ROOTS": str(data)}
    env.pop("AUTOML_RAY_ADDRESS", None)
    automl = str(Path(sys.executable).with_name("automl"))
    serve = subprocess.Popen([automl, "serve", "--port", str(port), "--dashboard-port",
                              str(dashboard)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    runner = subprocess.Popen([automl, "runner"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                       headers={"Authorization": f"Bearer {TOKEN}"})
    rows: list[Row] = []
    try:
        _wait(lambda: api.get("/healthz").status_code == 200, 120)
        job = api.post("/jobs", json=spec("soak", str(data), trials)).json()
        job_id = job["id"]
        marks = sorted({m for m in at if m < trials} | {trials})
        job_ms: list[float] = []
        trials_ms: list[float] = []
        state = "queued"
        while True:
            started = time.perf_counter()
            view = api.get(f"/jobs/{job_id}").json()
            job_ms.append((time.perf_counter() - started) * 1000)
            state = view["state"]
            finished = view["trials"]["complete"] + view["trials"]["pruned"] + view["trials"]["failed"]
            started = time.perf_counter()
            offset = max(0, finished - 100)
            api.get(f"/jobs/{job_id}/trials", params={"limit": 100, "offset": offset})
            trials_ms.append((time.perf_counter() - started) * 1000)
            ended = state not in ("queued", "running")  # published, retention applied
            if ended or (marks and finished >= marks[0]):
                rows.append(_measure(finished, home, job_id, tmp, cache, admin_url, schema,
                                     database_url, runner.pid, serve.pid, job_ms, trials_ms,
                                     end=ended))
                job_ms, trials_ms = [], []
                while marks and marks[0] <= finished:
                    marks.pop(0)
                if ended:
                    break
            time.sleep(1.0)
        if state != "succeeded":
            log = home / "logs" / f"{job_id}.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"the soak job ended {state}: {view.get('error')}\n{tail}")
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        serve.terminate()
        for process in (runner, serve):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    return rows


def _measure(finished: int, home: Path, job_id: str, tmp: Path, cache: Path, admin_url: str,
             schema: str, database_url: str, runner_pid: int, serve_pid: int,
             job_ms: list[float], trials_ms: list[float], end: bool = False) -> Row:
    run_dir = home / "runs" / job_id
    overheads, asks, reports = _driver_side(database_url, job_id, run_dir)
    return Row(
        finished=finished,
        run_mb=_mb(run_dir), tmp_mb=_mb(tmp), artifacts_mb=_mb(home / "artifacts"),
        cache_mb=_mb(cache), database_mb=_database_mb(admin_url, schema),
        driver_rss_mb=_rss(_pid_of(f"automl.jobs.process {job_id}")),
        runner_rss_mb=_rss(runner_pid), serve_rss_mb=_rss(serve_pid),
        overhead_s=statistics.median(overheads) if overheads else float("nan"),
        get_job_p95_ms=_p95(job_ms), get_trials_p95_ms=_p95(trials_ms),
        ask_p95_ms=_p95(asks), report_prune_p95_ms=_p95(reports), end=end,
    )


def _driver_side(database_url: str, job_id: str, run_dir: Path
                 ) -> tuple[list[float], list[float], list[float]]:
    """Per-trial overhead and the driver's own times, over the last 10 finished trials."""
    epoch_seconds: dict[str, float] = {}
    for result in run_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            epoch_seconds[rows[0]["trial_id"]] = sum(r.get("epoch_seconds", 0.0) for r in rows)
    try:
        study = optuna.load_study(study_name=job_id, storage=database_url)
    except KeyError:  # the job has not created it yet
        return [], [], []
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
                   and t.datetime_complete is not None and t.datetime_start is not None),
                  key=lambda t: t.datetime_complete)[-10:]  # type: ignore[arg-type, return-value]
    overheads: list[float] = []
    asks: list[float] = []
    reports: list[float] = []
    for trial in done:
        assert trial.datetime_complete is not None and trial.datetime_start is not None
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        ray_id = trial.user_attrs.get(keys.RAY_TRIAL_ID)
        if ray_id in epoch_seconds:
            overheads.append(wall - epoch_seconds[ray_id])
        timings = trial.user_attrs.get(keys.DRIVER_MS) or {}
        if timings.get("ask") is not None:
            asks.append(float(timings["ask"]))
        reports.extend(float(t) for t in timings.get("report_and_prune", []))
    return overheads, asks, reports


@contextmanager
def _schema(url: str) -> Iterator[tuple[str, str]]:
    name = f"soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield (f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
               f"&application_name={name}"), name
    finally:
        with admin.begin() as connection:
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE application_name = :name"), {"name": name})
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def _database_mb(url: str, schema: str) -> float:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            size = connection.execute(text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relkind = 'r'"), {"schema": schema}).scalar_one()
    finally:
        engine.dispose()
    return float(size) / 1e6


def _mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
        except OSError:  # removed while we looked
            continue
    return total / 1e6


def _pid_of(pattern: str) -> int | None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def _rss(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))]


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("automl serve did not start")
        time.sleep(0.5)
