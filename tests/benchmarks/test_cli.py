"""Every `automl-bench` command runs on a fresh machine: each with its smallest arguments, as a
real process, with nothing inherited (no Ray, no RAY_* variables, an empty home and AUTOML_HOME)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer

from benchmarks.cli import app
from tests.benchmarks.test_replay import write_backbone_costs, write_recorded_runs

pytestmark = pytest.mark.slow
AUTOML_BENCH = str(Path(sys.executable).with_name("automl-bench"))


def smallest_runs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each command's smallest arguments and a line of what it prints (its table's title)."""
    runs, costs, bench = str(tmp / "recorded"), str(tmp / "costs.json"), str(tmp / "bench")
    write_recorded_runs(tmp / "recorded")
    write_backbone_costs(tmp / "costs.json")
    replay = ["--data", runs, "--workers", "1", "--seeds", "1", "--budgets", "120",
              "--datasets", "D0"]
    return {  # the slowest first: they overlap the rest
        "overhead": (["--trials", "1", "--epochs", "1", "--img-size", "32"],
                     "orchestration overhead"),
        "soak": (["--trials", "2", "--images", "30", "--at", "2"], "soak: 2 trials"),
        "api": (["--jobs", "1", "--clients", "1", "--requests", "1"], "automl serve under load"),
        "serve": (["--backbone", "test_resnet.r160_in1k", "--img-size", "16", "--seconds", "1"],
                  "automl serve-model /predict"),
        "cache-scale": (["--images", "16", "--img-size", "32", "--data-dir", bench],
                        "decoded-image cache: 16 JPEGs"),
        "gpu": (["--steps", "5", "--images", "64", "--no-share"], "training throughput"),
        "ddp": (["--epochs", "1", "--seeds", "0"], "data-parallel trial"),
        "cache": (["--images", "16", "--trials", "2", "--img-size", "32"],
                  "decoded-image cache, 16 JPEGs"),
        "loader": (["--images", "64", "--img-size", "32", "--batch-size", "8", "--batches", "1",
                    "--data-dir", bench], "training loader at 32 px"),
        "storage": (["--writers", "1", "--sizes", "10", "--epochs", "2", "--trials", "1"],
                    "storage under load"),
        "distill": (["--teacher", "test_resnet", "--students", "test_resnet", "--epochs", "1",
                     "--img-size", "16", "--student-size", "16"], "distillation on builtin:digits"),
        "backbone-costs": (["--backbones", "test_resnet.r160_in1k", "--no-write"], "costs on"),
        "replay": ([*replay, "--strategies", "random"], "mean normalized regret"),
        "replay-nested": ([*replay, "--inner-seeds", "1", "--variants", "learned,promotion",
                           "--no-anchors", "--processes", "1"], "mean normalized regret"),
        "replay-pareto": ([*replay, "--costs", costs, "--strategies", "mo-random"],
                          "accuracy x latency"),
        "portfolio": (["--data", runs, "--size", "1"], '"generated_by": "automl-bench portfolio'),
        "curve-model": (["--data", runs], '"origin": "automl-bench curve-model'),
        "evaluate": (["--sizes", "50", "--data-dir", bench], "automl evaluate: test_resnet"),
    }


def fresh_environment(tmp: Path) -> dict[str, str]:
    """This process's environment less anything of Ray's or automl's own (the database the
    benchmarks use aside), with an empty home: no Ray token file, no caches."""
    keep = {"AUTOML_TEST_DATABASE_URL"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AUTOML_")) or k in keep}
    env.update(HOME=str(tmp / "home"), AUTOML_HOME=str(tmp / "automl-data"),
               COLUMNS="200")  # tables one line wide, titles unwrapped
    return env


@pytest.mark.timeout(900)  # about 3 minutes on 2 cores that other tests share
def test_every_automl_bench_command_runs_on_a_fresh_machine_with_its_smallest_arguments(
    tmp_path: Path,
) -> None:
    runs = smallest_runs(tmp_path)
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert set(runs) == commands, "give each automl-bench command its smallest run here"
    env = fresh_environment(tmp_path)

    def run(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AUTOML_BENCH, name, *runs[name][0]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(3) as pool:  # most of the slow ones wait on processes they start
        done = dict(zip(runs, pool.map(run, runs), strict=True))
    failed = {name: f"exit {r.returncode}: {r.stderr[-2000:]}" for name, r in done.items()
              if r.returncode != 0 or runs[name][1] not in r.stdout}
    assert not failed, "\n".join(f"automl-bench {name} {' '.join(runs[name][0])}: {why}"
                                 for name, why in failed.items())
