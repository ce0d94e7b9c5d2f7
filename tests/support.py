"""What several test modules share: job specs, generated images, waiting, ports, serving an
exported model the way a serving stack would, and a TCP proxy that can cut a real database
connection (an outage of one client's database, without restarting the server every other test
uses)."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

AUTOML = str(Path(sys.executable).with_name("automl"))  # the console script, as users run it

# A job small enough for 2 CPU cores: the tiny timm test models on 32-px digits.
TINY_SPACE: dict[str, Any] = {
    "backbone": "test_resnet.r160_in1k", "pretrained": False, "img_size": 32,
    "augment": "none", "batch_size": 64, "freeze_stages": 0,
}


# Half the learning rates cannot learn in 3 epochs, so the pruner has something to prune.
# Successive halving, because over 3 epochs Hyperband puts most trials in a bracket whose
# first rung is the last epoch (nothing to prune); the PostgreSQL run keeps the default.
# the least a job spec holds
MINIMAL_JOB: dict[str, Any] = {"name": "t", "dataset": {"source": "builtin:digits"}}
DIGITS_JOB: dict[str, Any] = {
    "name": "digits-test",
    "dataset": {"source": "builtin:digits"},
    "budget": {"n_trials": 8, "max_epochs": 3},
    "max_concurrent_trials": 2,
    "resources": {"cpu": 1},
    "strategy": {"seed": 0, "warm_start": False, "pruner": "sha"},
    # the corruption suite: scored where a test asks for it (tests/jobs/test_driver.py)
    "evaluation": {"corruptions": False},
    "space": {
        "backbone": "test_resnet.r160_in1k",
        "pretrained": False,
        "img_size": 32,
        "augment": "none",
        "optimizer": "adamw",
        "lr": [0.003, 1.0e-7],
        "schedule": "constant",
        "warmup_epochs": 0,
        "batch_size": 64,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "freeze_stages": [0, 1],
    },
}



def load_study(url: str, name: str) -> Any:
    """The study, through the process's one storage for the URL: `optuna.load_study(storage=URL)`
    builds a new engine and connection pool each call, and a polling test ran PostgreSQL out of
    connections."""
    import optuna

    from storage.optuna_storage import optuna_storage

    return optuna.load_study(study_name=name, storage=optuna_storage(url))


def assert_budget_met_once(study: Any, n_trials: int) -> None:
    """Exactly the budget's trials, all finished, none run twice: each by its own Ray trial,
    with its epochs reported from the first on, none missing. A trial a cancel stopped before
    its first epoch left nothing, and does not count."""
    from optuna.trial import TrialState

    everything = study.get_trials(deepcopy=False)
    assert all(not t.intermediate_values and t.state == TrialState.FAIL
               for t in everything if t.user_attrs.get("uncounted"))
    trials = [t for t in everything if not t.user_attrs.get("uncounted")]
    assert len(trials) == n_trials, [(t.number, t.state) for t in trials]
    assert all(t.state.is_finished() for t in trials), [(t.number, t.state) for t in trials]
    assert len({t.user_attrs.get("ray_trial_id") for t in trials}) == n_trials
    for trial in trials:
        epochs = sorted(trial.intermediate_values)
        assert epochs == list(range(1, len(epochs) + 1)), (trial.number, epochs)


def assert_only_kept_checkpoints(study: Any, run_folder: Path) -> None:
    """Retention applied to every finished trial: a failed or pruned one keeps no checkpoint, a
    complete one at most one, without optimizer state."""
    from ray import tune

    from automl.tune.retention import OPTIMIZER_FILES, checkpoint_folders

    folders = {t.trial_id: Path(t.path) for t in tune.ExperimentAnalysis(str(run_folder)).trials
               if t.path is not None}
    for trial in study.get_trials(deepcopy=False):
        folder = folders.get(trial.user_attrs.get("ray_trial_id"))
        if folder is None or not trial.state.is_finished():
            continue
        kept = checkpoint_folders(folder)
        if trial.state.name != "COMPLETE":
            assert kept == [], (trial.number, trial.state, kept)
            continue
        assert len(kept) <= 1, (trial.number, kept)
        left = [k / name for k in kept for name in OPTIMIZER_FILES if (k / name).exists()]
        assert left == [], (trial.number, left)


def trial_folders() -> set[Path]:
    """The trial engine's working folders in TMPDIR (what a finished trial must not leave)."""
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("automl-trial-*"))


def misfit_weights(folder: Path) -> Path:
    """Weights for DIGITS_JOB's backbone whose first layer has the wrong shape: every trial
    that loads them fails the same way, and only when it builds its model (seen with workers
    that cannot reach the model hub)."""
    import safetensors.torch
    import timm
    import torch

    state = timm.create_model(DIGITS_JOB["space"]["backbone"]).state_dict()
    state["conv1.0.weight"] = torch.zeros(3, 3)
    weights = folder / "misfit.safetensors"
    safetensors.torch.save_file(state, str(weights))
    return weights


def write_images(folder: Path, count: int, color: tuple[int, int, int], seed: int = 0) -> None:
    """Small noisy images of one dominant color: two colors make an easy two-class dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.integers(-30, 30, size=(20, 24, 3))
        pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")


def one_colour_png(width: int, height: int) -> bytes:
    """A black grayscale PNG of any size, written row by row: 8193 x 8192 pixels take 65 KB
    and no more memory than a row, where decoding them takes seconds and 200 MB as RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte, then the pixels
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 300.0, what: str = "") -> None:
    """Poll `condition` until it holds; errors while polling count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or 'a condition'}")
        time.sleep(0.5)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; `cut()` drops every connection and refuses new
    ones (a database that went away), `restore()` lets them through again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._up = threading.Event()
        self._up.set()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, database_url: str) -> str:
        host = f"{self.target[0]}:{self.target[1]}"
        assert host in database_url, database_url
        return database_url.replace(host, f"127.0.0.1:{self.port}")

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stopped.set()
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self._up.is_set():
                client.close()  # refused while cut
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()


def serve_onnx(model: Path, images: list[Path]) -> np.ndarray:
    """What a serving stack does with only the file: preprocess by its metadata, run it."""
    import onnxruntime
    from PIL import Image

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    prep = json.loads(meta["preprocessing"])
    size, resize = prep["img_size"], prep["resize"]
    batch = []
    for path in images:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        scale = resize / min(rgb.size)
        w, h = max(resize, round(rgb.width * scale)), max(resize, round(rgb.height * scale))
        rgb = rgb.resize((w, h), Image.Resampling[prep["interpolation"].upper()])
        left, top = (w - size) // 2, (h - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
        batch.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
    probabilities: np.ndarray = session.run(["probabilities"], {"image": np.stack(batch)})[0]
    return probabilities


def run_cli(*args: str) -> tuple[int, str]:
    """`automl train-one ARGS` in this process: its exit code and output."""
    from typer.testing import CliRunner

    from automl.cli import app

    result = CliRunner().invoke(app, ["train-one", *args])
    return result.exit_code, result.output


@contextlib.contextmanager
def count_spec_work(monkeypatch: Any) -> Iterator[dict[str, int]]:
    """How often, in this process, a job spec is validated, its search space built, an
    override checked (each of its values with `TrialConfig`, a backbone with timm) and a
    weights file checked: each real function wrapped, not replaced, so the job runs as it
    would."""
    from automl.search import space as space_module
    from automl.search import spec as spec_module
    from workers.model import weights

    counts = {"validated": 0, "space built": 0, "override checked": 0, "weights checked": 0}

    def counted(name: str, real: Callable[..., Any], when: Callable[..., bool] | None = None
                ) -> Callable[..., Any]:
        @functools.wraps(real)
        def counting(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args, **kwargs):
                counts[name] += 1
            return real(*args, **kwargs)
        return counting

    # the spec's first check walks the whole payload from its top ("" names the top level)
    monkeypatch.setattr(spec_module, "first_unfit", counted(
        "validated", spec_module.first_unfit, lambda value, where, depth=0: where == ""))
    space = space_module.SearchSpace
    from_spec = space.from_spec.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(space, "from_spec", classmethod(counted("space built", from_spec)))
    monkeypatch.setattr(space_module, "parse_override",
                        counted("override checked", space_module.parse_override))
    monkeypatch.setattr(weights, "check_weights_file",
                        counted("weights checked", weights.check_weights_file))
    yield counts


def backbone_weights(folder: Path) -> Path:
    """A weights file for DIGITS_JOB's backbone that every trial can load."""
    import safetensors.torch
    import timm

    weights = folder / "backbone.safetensors"
    state = timm.create_model(DIGITS_JOB["space"]["backbone"]).state_dict()
    safetensors.torch.save_file(state, str(weights))
    return weights


@dataclass(frozen=True)
class OpenedPage:
    images: list[tuple[str, bool, int]]  # each <img>: alt, loaded, natural width
    body: str  # the page's visible text
    requests: list[str]  # every URL the page asked for


def open_offline_page(page_file: Path, screenshot: Path | None = None) -> OpenedPage:
    """A self-contained report page opened in headless Chromium, as a user opens it."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
        body = page.inner_text("body")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return OpenedPage([tuple(i) for i in images], body, requests)
