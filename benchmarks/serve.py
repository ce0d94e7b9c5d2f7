"""`automl serve-model` under load, against onnxruntime alone on the same model.

    automl-bench serve [--backbone resnet18] [--img-size 128] [--seconds 10] [--threads 1]

A randomly initialised timm model (resnet18 at 128 px by default: a real network's cost per
image, no download) is exported by the trial engine's exporter; a real `automl serve-model`
process (uvicorn, the token on) serves it. 1 and then 32 concurrent clients (httpx, one
connection each, in this process) post PNGs (160x120, so every request decodes, resizes and
crops) to /predict for `--seconds` each: throughput and latency from the client's side. The
batch sizes the server formed come from its /metrics histogram; onnxruntime alone then runs the
same file with the same thread count at those batch sizes, in this run. The ratio of the two at
32 clients is the serving stack's efficiency (HTTP, multipart, PNG decode and batching included;
on a small machine the clients' own CPU use is in it too, and other load on the machine). The
CPU ratio (onnxruntime's CPU time per image alone over the server process's, all its threads)
says the same without the clients and the neighbours: what the server spends beyond inference.
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

TOKEN = "bench-token"
NAME = "bench"


@dataclass(frozen=True)
class Load:
    clients: int
    requests: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    errors: int
    mean_batch: float
    batches: dict[str, int]  # histogram bucket (le) -> batches in it, this phase only
    server_cpu_ms: float | None  # CPU time of the server process per image (Linux)
    client_cpu_ms: float  # CPU time of this process (the clients) per image


@dataclass(frozen=True)
class Raw:
    batch: int
    images_per_s: float
    cpu_ms: float  # per image


@dataclass(frozen=True)
class Result:
    backbone: str
    img_size: int
    threads: int
    loads: list[Load]
    raw: list[Raw]
    ratio: float  # server images/s at the most clients / onnxruntime's at its mean batch
    cpu_ratio: float | None  # onnxruntime's CPU per image / the server's, at the same batches


def make_model(folder: Path, backbone: str, img_size: int) -> Path:
    import torch

    from workers.config import TrialConfig
    from workers.export import export_model
    from workers.model.backbone import create_backbone
    from workers.model.preprocessing import preprocessing
    from workers.predict import LoadedModel

    config = TrialConfig.from_dict({"backbone": backbone, "pretrained": False,
                                    "img_size": img_size, "freeze_stages": 0})
    classes = [f"class{i}" for i in range(10)]
    model = create_backbone(config, len(classes)).eval()
    loaded = LoadedModel(model, config, classes, preprocessing(backbone, img_size),
                         torch.device("cpu"))
    return export_model(loaded, folder / "model.onnx").path


def pngs(n: int = 32) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _batches(base: str) -> tuple[dict[str, int], float, float]:
    """The server's batch-size histogram: cumulative buckets, sum, count."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    buckets, total, count = {}, 0.0, 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "automl_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = int(sample.value)
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return buckets, total, count


async def _load(base: str, images: list[bytes], clients: int, seconds: float
                ) -> tuple[list[float], int, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits,
                                 timeout=60) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                response = await client.post(
                    "/predict", files={"file": ("x.png", images[i % len(images)], "image/png")})
                latencies.append((time.perf_counter() - sent) * 1000)
                errors += response.status_code != 200
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def _raw(path: Path, batch: int, threads: int, seconds: float = 3.0) -> tuple[float, float]:
    """Images/s and CPU ms per image of onnxruntime alone on `batch`-image batches."""
    from serving.model import ServedModel

    model = ServedModel(path, threads)
    rows = np.random.default_rng(1).integers(
        0, 256, (batch, 3, model.img_size, model.img_size), dtype=np.uint8)
    model.run(rows)  # warm up
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        model.run(rows)
        done += batch
    return done / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / done


def run(backbone: str = "resnet18", img_size: int = 128, seconds: float = 10.0,
        threads: int = 1, clients: tuple[int, ...] = (1, 32), max_batch: int = 32,
        max_wait_ms: float = 5.0) -> Result:
    images = pngs()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp) / NAME
        folder.mkdir()
        path = make_model(folder, backbone, img_size)
        port = _port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "AUTOML_API_TOKEN": TOKEN, "AUTOML_HOME": tmp,
               "OMP_NUM_THREADS": str(threads)}
        process = subprocess.Popen(
            [sys.executable, "-m", "automl.cli", "serve-model", str(folder), "--port", str(port),
             "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms",
             str(max_wait_ms)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(base, process)
            asyncio.run(_load(base, images, 4, 1.0))  # warm up
            loads = []
            for n in clients:
                before, sum0, count0 = _batches(base)
                server0, client0 = _cpu_seconds(process.pid), time.process_time()
                latencies, errors, wall = asyncio.run(_load(base, images, n, seconds))
                server1, client1 = _cpu_seconds(process.pid), time.process_time()
                after, sum1, count1 = _batches(base)
                ordered = sorted(latencies)
                done = max(len(ordered), 1)
                loads.append(Load(
                    n, len(ordered), (len(ordered) - errors) / wall, statistics.median(ordered),
                    ordered[int(0.95 * (len(ordered) - 1))], errors,
                    (sum1 - sum0) / max(count1 - count0, 1), _per_bucket(before, after),
                    None if server0 is None or server1 is None
                    else 1000 * (server1 - server0) / done,
                    1000 * (client1 - client0) / done))
        finally:
            process.terminate()
            process.wait(timeout=30)
        sizes = sorted({1, *(max(1, round(load.mean_batch)) for load in loads)})
        raw = [Raw(b, *_raw(path, b, threads)) for b in sizes]
    busiest = loads[-1]
    at = next(r for r in raw if r.batch == max(1, round(busiest.mean_batch)))
    cpu = None if busiest.server_cpu_ms is None else at.cpu_ms / busiest.server_cpu_ms
    return Result(backbone, img_size, threads, loads, raw, busiest.images_per_s / at.images_per_s,
                  cpu)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads (Linux's /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_bucket(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Batches per bucket in a phase, from two cumulative histograms."""
    out, previous = {}, 0
    for le in after:
        cumulative = after[le] - before.get(le, 0)
        if cumulative - previous:
            out[le] = cumulative - previous
        previous = cumulative
    return out


def _wait(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/v2/health/ready").json().get("ready"):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("automl serve-model did not start")
        time.sleep(0.3)
