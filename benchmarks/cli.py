"""`automl-bench ...`: each benchmark is one command that prints a table.

A command of its own, not a group of `automl`: the product never imports the lab.

Speed and memory targets live here, never in timed tests. Heavy imports stay inside the
commands so `automl --help` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Benchmarks: each prints a table (see README, Benchmarks).",
                  no_args_is_help=True)
out = Console()


@app.command()
def overhead(
    trials: Annotated[int, typer.Option(min=1)] = 4,
    epochs: Annotated[int, typer.Option(min=1, help="10 makes a ~30 s trial on 2 CPU cores")] = 10,
    img_size: Annotated[int, typer.Option()] = 64,
    freeze_thaw: Annotated[bool, typer.Option(
        help="instead: a pruner: freeze-thaw job (6 trials x 4 epochs at 32 px), its decisions' "
             "time per trial and each pause's and resume's wall time")] = False,
) -> None:
    """The same trials through `automl run` vs the trial engine in a plain loop."""
    from automl.jobs.local_ray import own_ray_auth

    own_ray_auth(None)  # before Ray is imported: the local Ray it starts takes a token
    from benchmarks.overhead import run

    if freeze_thaw:
        _freeze_thaw_overhead()
        return

    result = run(trials=trials, epochs=epochs, img_size=img_size)
    plain_trial = result.plain_wall / trials
    table = Table("", "plain loop", "automl run", title="orchestration overhead")
    table.add_row("wall time (s)", f"{result.plain_wall:.1f}", f"{result.automl_wall:.1f}")
    table.add_row("train + eval steps (s)", f"{result.plain_steps:.1f}", f"{result.automl_steps:.1f}")
    table.add_row("per trial (s)", f"{plain_trial:.1f}", f"{result.automl_wall / trials:.1f}")
    table.add_row("ratio of wall times", "", f"{result.ratio:.3f} ({(result.ratio - 1) * 100:+.1f}%)")
    table.add_row("time outside steps, beyond plain (s)", "",
                  f"{result.orchestration:.1f} ({100 * result.orchestration / result.plain_wall:+.1f}%)")
    table.add_row("  once per job: Ray + first worker (s)", "", f"{result.fixed:.1f}")
    table.add_row("  per trial (s)", "",
                  f"{result.per_trial:.2f} ({100 * result.per_trial / plain_trial:+.1f}% of a trial)")
    out.print(table)
    parts = Table("where automl's time outside steps goes", "seconds", "% of automl wall")
    for name, seconds in result.breakdown.items():
        parts.add_row(name, f"{seconds:.1f}", f"{100 * seconds / result.automl_wall:.1f}")
    out.print(parts)


def _freeze_thaw_overhead() -> None:
    import statistics

    from benchmarks.overhead import freeze_thaw

    result = freeze_thaw()

    def spread(values: list[float]) -> str:
        if not values:
            return "none happened"
        return (f"{len(values)}: median {statistics.median(values):.2f} s, "
                f"max {max(values):.2f} s")

    table = Table("", "freeze-thaw job", title="freeze-thaw overhead (one trial at a time)")
    table.add_row("trials / job wall (s)", f"{result.trials} / {result.wall:.1f}")
    table.add_row("decisions: calls, total (s)", f"{result.calls}, {result.decisions:.3f}")
    table.add_row("decisions per trial (ms)", f"{1e3 * result.per_trial:.1f}")
    table.add_row("decision mean (ms)", f"{1e3 * result.decisions / max(result.calls, 1):.2f}")
    table.add_row("pause -> slot reused", spread(result.pauses))
    table.add_row("resume -> next epoch, less its steps", spread(result.resumes))
    out.print(table)


@app.command()
def cache(
    images: Annotated[int, typer.Option(min=16)] = 2000,
    trials: Annotated[int, typer.Option(min=2)] = 4,
    img_size: int = 64,
) -> None:
    """Start-up and first-epoch time of trials 1..N with and without the decoded-image cache."""
    from benchmarks.decoded_cache import run

    rows = run(n_images=images, trials=trials, img_size=img_size)
    table = Table("arm", "trial", "start-up (s)", "first epoch (s)",
                  title=f"decoded-image cache, {images} JPEGs at 320 px -> {img_size} px")
    for row in rows:
        table.add_row(row.arm, str(row.trial), f"{row.startup_s:.2f}", f"{row.epoch_s:.2f}")
    out.print(table)
    later = {arm: [r.startup_s for r in rows if r.arm == arm and r.trial > 1]
             for arm in ("cache", "no cache")}
    mean = {arm: sum(v) / len(v) for arm, v in later.items()}
    out.print(f"trials 2..{trials}: start-up {mean['no cache']:.2f}s without the cache, "
              f"{mean['cache']:.2f}s with it ({mean['no cache'] / max(mean['cache'], 1e-9):.0f}x)")


@app.command("cache-scale")
def cache_scale(
    images: Annotated[int, typer.Option(min=16, help="generated once under --data-dir, reused")] = 100_000,
    img_size: Annotated[int, typer.Option(min=8)] = 224,
    crop_pct: Annotated[float, typer.Option(min=0.5, max=1.0)] = 0.875,
    data_dir: Annotated[Path | None, typer.Option(
        help="where the generated JPEGs live between runs; default $AUTOML_BENCH_DIR or "
             "~/.cache/automl/bench")] = None,
    keep: Annotated[bool, typer.Option(help="keep the decoded cache it builds")] = False,
    parquet: Annotated[bool, typer.Option(help="the same JPEGs as bytes in one Hub-style parquet "
                                          "file, row groups of 10,000")] = False,
) -> None:
    """The decoded cache at a real dataset's size: build time and memory, disk, and what a second
    job on the same dataset pays (it must reuse the cache, not rebuild)."""
    from benchmarks.decoded_cache import scale

    r = scale(images, img_size, crop_pct, data_dir, keep, parquet)
    b, s = r.build, r.second
    rate = r.n_images / b["build_s"]
    held = "in one parquet file" if parquet else "in an ImageFolder"
    table = Table("", "value", title=f"decoded-image cache: {r.n_images:,} JPEGs (200-800 px sides, "
                  f"any aspect) {held} -> {r.size} px squares, {r.cores} CPU cores")
    if r.generated_s is not None:
        table.add_row("generating the dataset (once, then reused)", f"{r.generated_s:.0f} s")
    table.add_row("first job: index the dataset", f"{b['index_s']:.2f} s")
    table.add_row("first job: verify every image (driver)", f"{b['verify_s']:.1f} s")
    table.add_row("build (decode + resize + write)", f"{b['build_s']:.0f} s")
    table.add_row("  images/s", f"{rate:.0f}")
    table.add_row("  images per CPU-second (per core)", f"{r.n_images / b['build_cpu_s']:.0f}")
    table.add_row("  CPU load average (1 min) at its end", f"{b['load_1min']:.1f}")
    table.add_row("disk used", f"{b['disk_bytes'] / 1e9:.2f} GB ({b['disk_bytes'] / r.n_images / 1e3:.0f} KB "
                  "an image)")
    table.add_row("build process RSS: after imports / peak",
                  f"{b['baseline_rss_bytes'] / 1e6:.0f} / {b['peak_rss_bytes'] / 1e6:.0f} MB")
    table.add_row("second job: index the dataset", f"{s['index_s']:.2f} s")
    table.add_row("second job: verify (driver; known files skip)", f"{s['verify_s']:.2f} s")
    table.add_row("second job: fingerprint (each trial)", f"{s['fingerprint_s']:.2f} s")
    table.add_row("second job: fingerprint + open the memory map (each trial)", f"{s['open_s']:.2f} s")
    table.add_row("second job: rebuilt the cache?", "yes" if s["rebuilt"] else "no")
    table.add_row("  (verifying every image again would cost)", f"{s['full_verify_s']:.1f} s")
    out.print(table)


@app.command()
def loader(
    images: Annotated[int, typer.Option(min=64, help="generated once, reused")] = 2000,
    img_size: Annotated[int, typer.Option(min=8)] = 224,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    batches: Annotated[int, typer.Option(min=1, help="timed batches per policy")] = 6,
    data_dir: Annotated[Path | None, typer.Option(help="as for cache-scale")] = None,
) -> None:
    """Images/s per loader worker for each augmentation policy (memory-mapped cache -> policy ->
    batches), CPU path vs GPU path, and the CPU cores one GPU needs to stay fed."""
    from benchmarks.loader import cores_needed, run

    rows = run(images, img_size, batch_size=batch_size, batches=batches, data_dir=data_dir)
    table = Table("policy", "CPU path: per worker, img/s (per CPU-s)", "cores at 2,600 img/s",
                  "cores at 10,000", "GPU path: per worker, img/s (per CPU-s)", "cores at 10,000",
                  "device part on this CPU, img/s (per CPU-s)",
                  title=f"training loader at {img_size} px, batches of {batch_size}, "
                        f"{len(os.sched_getaffinity(0))} CPU cores shared with other users")
    for row in rows:
        cells = [row.policy, f"{row.cpu_path.wall:,.0f} ({row.cpu_path.per_cpu_second:,.0f})",
                 f"{cores_needed(row.cpu_path.per_cpu_second, 2600):.1f}",
                 f"{cores_needed(row.cpu_path.per_cpu_second, 10_000):.1f}", "", "", ""]
        if row.gpu_path is not None and row.device_part is not None:
            cells[4:] = [f"{row.gpu_path.wall:,.0f} ({row.gpu_path.per_cpu_second:,.0f})",
                         f"{cores_needed(row.gpu_path.per_cpu_second, 10_000):.1f}",
                         f"{row.device_part.wall:,.0f} ({row.device_part.per_cpu_second:,.0f})"]
        table.add_row(*cells)
    out.print(table)
    out.print("cores = training rate / a worker's images per CPU-second + 1 for the trial's own "
              "process. 2,600 img/s: timm's resnet50 bf16 on one A100; 10,000: a small backbone, "
              "or a larger one on an H100/H200. The device part ran on this machine's CPU (no GPU "
              "here), so its rate says nothing of a GPU's; `none` is a slice in the loader on "
              "both paths.")


@app.command()
def gpu(
    steps: Annotated[int, typer.Option(min=5)] = 30,
    images: Annotated[int, typer.Option(
        min=0, help="the trial's dataset; 0: 24 batches on a GPU, 8 on a CPU")] = 0,
    share: Annotated[bool, typer.Option(help="also run four small trials on one device")] = True,
) -> None:
    """Images/s of one trial's training loop vs timm's benchmark loop (GPU when there is one)."""
    from benchmarks.gpu_throughput import run, sharing

    rows = run(steps=steps, n_images=images)
    table = Table("model", "device", "batch", "px", "timm loop (img/s)", "trial engine (img/s)",
                  "ratio", title="training throughput (bf16 autocast on CUDA)")
    for row in rows:
        table.add_row(row.model, row.device, str(row.batch_size), str(row.img_size),
                      f"{row.reference_ips:.0f}", f"{row.engine_ips:.0f}", f"{row.ratio:.2f}")
    out.print(table)
    if rows and rows[0].device != "cuda":
        out.print("no GPU on this machine: CPU numbers for a small model; the >= 0.95 target "
                  "applies to resnet50 and vit_small at 224 px, bf16, on a GPU")
    if share:
        result = sharing()
        out.print(f"four small trials: one after another {result['sequential_s']:.1f}s, "
                  f"sharing the device {result['shared_s']:.1f}s "
                  f"(x{result['speedup']:.2f})")


@app.command()
def ddp(
    workers: Annotated[int, typer.Option(min=2, help="the group's size (GPUs: at most those here)")] = 2,
    epochs: Annotated[int, typer.Option(min=1, help="images/s is the last epoch's")] = 2,
    seeds: Annotated[int, typer.Option(min=0, help="accuracy runs per arm; 0: none")] = 3,
    accuracy_epochs: Annotated[int, typer.Option(min=1)] = 3,
) -> None:
    """One trial over 1 vs N data-parallel workers: images/s, and validation accuracy with the
    same global batch (builtin:digits)."""
    from benchmarks.ddp import accuracy, throughput

    arms = throughput(workers, epochs)
    base = {a.model: a.images_per_second for a in arms if a.workers == 1}
    table = Table("model", "device", "workers", "images/s", "speed-up", "scaling efficiency",
                  title="data-parallel trial: images/s of the train phase")
    for arm in arms:
        speedup = arm.images_per_second / base[arm.model]
        table.add_row(arm.model, arm.device, str(arm.workers), f"{arm.images_per_second:.0f}",
                      f"{speedup:.2f}", f"{speedup / arm.workers:.2f}")
    out.print(table)
    if arms[0].device == "cpu":
        out.print("CPU: one thread per worker (OMP_NUM_THREADS=1), test_resnet at 32 px, global "
                  "batch 64; with CUDA: resnet50 and vit_base_patch16_224 at 224 px, bf16")
    if not seeds:
        return
    runs = accuracy(workers, seeds, accuracy_epochs)
    table = Table("seed", "1 worker", f"{workers} workers", "difference",
                  title=f"validation accuracy after {accuracy_epochs} epochs, global batch 64")
    for seed in range(seeds):
        one, group = (next(a.val_accuracy for a in runs if a.seed == seed and a.workers == n)
                      for n in (1, workers))
        table.add_row(str(seed), f"{one:.4f}", f"{group:.4f}", f"{group - one:+.4f}")
    out.print(table)


REPLAY_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "finetune-curves"


def _strategies(given: str, known: tuple[str, ...]) -> list[str]:
    names = [s.strip() for s in given.split(",") if s.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise typer.BadParameter(f"unknown strategy {', '.join(unknown)}; choose from "
                                 f"{', '.join(known)}", param_hint="--strategies")
    return names


@app.command()
def replay(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False,
                                       help="recorded runs in the finetune-curves format")] = REPLAY_DATA,
    workers: Annotated[int, typer.Option(min=1)] = 4,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    budgets: Annotated[str, typer.Option(help="seconds, comma-separated")] = "3600,14400,57600",
    strategies: Annotated[str, typer.Option(
        help="random, asha, tpe, default, asha-promotion, hyperband-pause, default-promotion, "
             "freeze-thaw, freeze-thaw-early")] = "random,asha,default",
    datasets: Annotated[str | None, typer.Option(help="comma-separated; default all")] = None,
    processes: Annotated[int | None, typer.Option(min=1, help="default: every core")] = None,
    hold_out_backbones: Annotated[bool, typer.Option(
        help="each backbone family in turn as the job's fixed backbone, held out of the "
             "portfolio too (arms: default, random, guarded, adapt; --strategies is ignored)")] = False,
) -> None:
    """Mean normalized regret of each strategy at each budget, replaying recorded fine-tuning runs."""
    from benchmarks.replay import STRATEGIES, mean_regret, run

    if hold_out_backbones:
        _replay_backbones(data, workers, seeds, budgets, datasets, processes)
        return
    names = _strategies(strategies, STRATEGIES)
    seconds = [float(b) for b in budgets.split(",")]
    chosen = datasets.split(",") if datasets else None
    cells = run(data, workers, seeds, seconds, names, chosen, processes,
                progress=lambda c: out.print(f"  {c.dataset} {c.strategy} seed {c.seed}: "
                                             + " ".join(f"{r:.3f}" for r in c.regrets)))
    table = Table("strategy", *[f"regret @ {b:.0f}s" for b in seconds],
                  title=f"mean normalized regret, {workers} workers, {seeds} seeds, "
                        f"{len({c.dataset for c in cells})} datasets (lower is better)")
    for name in names:
        table.add_row(name, *[f"{mean_regret(cells, name, i):.4f}" for i in range(len(seconds))])
    out.print(table)
    if "asha" in names:
        for name in names:
            if name == "asha":
                continue
            ratios = [mean_regret(cells, name, i) / max(mean_regret(cells, "asha", i), 1e-12)
                      for i in range(len(seconds))]
            out.print(f"{name} / asha: " + ", ".join(f"{r:.2f}" for r in ratios)
                      + "  (goal: <= 0.50 at every budget)")
    if {"default", "freeze-thaw"} <= set(names):
        per = Table("dataset", *[f"default @ {b:.0f}s" for b in seconds],
                    *[f"freeze-thaw @ {b:.0f}s" for b in seconds],
                    title="per dataset: mean normalized regret over seeds (held out)")
        for dataset in dict.fromkeys(c.dataset for c in cells):
            mine = [c for c in cells if c.dataset == dataset]
            per.add_row(dataset, *[f"{mean_regret(mine, s, i):.4f}" for s in ("default", "freeze-thaw")
                                   for i in range(len(seconds))])
        out.print(per)


def _replay_backbones(data: Path, workers: int, seeds: int, budgets: str,
                      datasets: str | None, processes: int | None) -> None:
    from benchmarks.replay import mean_regret
    from benchmarks.replay_backbones import ARMS, run, worse_than

    seconds = [float(b) for b in budgets.split(",")]
    cells = run(data, workers, seeds, seconds, ARMS, datasets.split(",") if datasets else None,
                processes=processes,
                progress=lambda c: out.print(f"  {c.dataset} {c.strategy} seed {c.seed}: "
                                             + " ".join(f"{r:.3f}" for r in c.regrets)))
    pools = len({c.dataset for c in cells})
    table = Table("arm", *[f"@ {b:.0f}s" for b in seconds], "pools worse than random",
                  title=f"held-out backbones: mean normalized regret, {workers} workers, {seeds} "
                        f"seeds, {pools} (dataset, backbone family) pools (lower is better)")
    for name in ARMS:
        table.add_row(name, *[f"{mean_regret(cells, name, i):.4f}" for i in range(len(seconds))],
                      " / ".join(str(worse_than(cells, name, "random", i))
                                 for i in range(len(seconds))) + f" of {pools}")
    out.print(table)


@app.command("replay-nested")
def replay_nested(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False,
                                       help="recorded runs in the finetune-curves format")] = REPLAY_DATA,
    workers: Annotated[int, typer.Option(min=1)] = 4,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    inner_seeds: Annotated[int, typer.Option(min=1)] = 3,
    budgets: Annotated[str, typer.Option(help="seconds, comma-separated")] = "3600,14400,57600",
    variants: Annotated[str, typer.Option(help="learned, promotion, learned-early")] = (
        "learned,promotion,learned-early"),
    datasets: Annotated[str | None, typer.Option(help="comma-separated; default all")] = None,
    processes: Annotated[int | None, typer.Option(min=1, help="default: every core")] = None,
    anchors: Annotated[bool, typer.Option(help="replay asha and default too (their code is "
                                                "not freeze-thaw's: --no-anchors reuses none)")] = True,
) -> None:
    """Freeze-thaw with its variant chosen per held-out dataset by an inner leave-one-dataset-out
    over the other datasets only, against asha and the default on the same replay."""
    from benchmarks.nested_variants import VARIANTS
    from benchmarks.nested_variants import run as nested_run
    from benchmarks.replay import mean_regret
    from benchmarks.replay import run as replay_run

    names = _strategies(variants, tuple(VARIANTS))
    seconds = [float(b) for b in budgets.split(",")]
    chosen_sets = datasets.split(",") if datasets else None
    fixed = replay_run(data, workers, seeds, seconds, ["asha", "default"], chosen_sets, processes,
                       progress=lambda c: out.print(f"  {c.dataset} {c.strategy} seed {c.seed}: "
                                                    + " ".join(f"{r:.4f}" for r in c.regrets))
                       ) if anchors else []
    nested = nested_run(data, workers, seeds, inner_seeds, seconds, names, chosen_sets, processes,
                        progress=lambda line: out.print(f"  {line}"))
    cells = [*fixed, *nested.outer, *nested.nested_cells()]
    arms = [*(["asha", "default"] if anchors else []), *names, "nested"]
    table = Table("strategy", *[f"regret @ {b:.0f}s" for b in seconds], "/ asha",
                  title=f"mean normalized regret, {workers} workers, {seeds} seeds, "
                        f"{len(nested.chosen)} datasets held out (lower is better)")
    for name in arms:
        means = [mean_regret(cells, name, i) for i in range(len(seconds))]
        ratios = [m / max(mean_regret(cells, "asha", i), 1e-12) for i, m in enumerate(means)
                  ] if anchors else []
        table.add_row(name, *[f"{m:.4f}" for m in means], ", ".join(f"{r:.2f}" for r in ratios))
    out.print(table)
    shown = ("default", "nested") if anchors else ("nested",)
    per = Table("dataset", "chosen", *[f"{s} @ {b:.0f}s" for s in shown for b in seconds],
                title="per dataset: the variant the inner leave-one-dataset-out chose, and regret")
    for dataset, variant in nested.chosen.items():
        mine = [c for c in cells if c.dataset == dataset]
        per.add_row(dataset, variant, *[f"{mean_regret(mine, s, i):.4f}" for s in shown
                                        for i in range(len(seconds))])
    out.print(per)


@app.command("replay-pareto")
def replay_pareto(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False,
                                       help="recorded runs in the finetune-curves format")] = REPLAY_DATA,
    workers: Annotated[int, typer.Option(min=1)] = 4,
    seeds: Annotated[int, typer.Option(min=1)] = 3,
    budgets: Annotated[str, typer.Option(help="seconds, comma-separated")] = "3600,14400,57600",
    strategies: Annotated[str, typer.Option(help="mo-random, nsga2, mo-asha, default")] = (
        "mo-random,nsga2,mo-asha,default"),
    datasets: Annotated[str | None, typer.Option(help="comma-separated; default all")] = None,
    costs: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="backbone costs; default benchmarks/backbone_costs.json")] = None,
) -> None:
    """Hypervolume of accuracy x latency each strategy reaches by each budget (Pareto jobs)."""
    from benchmarks import backbone_costs
    from benchmarks.replay_pareto import STRATEGIES, mean_share, run

    names = _strategies(strategies, STRATEGIES)
    seconds = [float(b) for b in budgets.split(",")]
    chosen = datasets.split(",") if datasets else None
    cells = run(data, costs or backbone_costs.TABLE, workers=workers, seeds=seeds,
                budgets=seconds, strategies=names,
                datasets=chosen,
                progress=lambda c: out.print(f"  {c.dataset} {c.strategy} seed {c.seed}: "
                                             + " ".join(f"{h:.3f}" for h in c.shares)))
    table = Table("strategy", *[f"hypervolume @ {b:.0f}s" for b in seconds],
                  title=f"accuracy x latency: share of the pool's hypervolume, {workers} workers, "
                        f"{seeds} seeds, {len({c.dataset for c in cells})} datasets "
                        "(higher is better)")
    for name in names:
        table.add_row(name, *[f"{mean_share(cells, name, i):.4f}" for i in range(len(seconds))])
    out.print(table)
    if "default" in names and len(names) > 1:
        ahead = all(mean_share(cells, "default", i) > mean_share(cells, other, i)
                    for other in names if other != "default" for i in range(len(seconds)))
        out.print(f"default above every other arm at every budget: {'yes' if ahead else 'no'}")


@app.command("backbone-costs")
def backbone_costs_(
    backbones: Annotated[str | None, typer.Option(help="comma-separated; default the replay's")] = None,
    write: Annotated[bool, typer.Option(help="write benchmarks/backbone_costs.json")] = True,
) -> None:
    """Parameters, MACs and latency (onnxruntime, 1 CPU thread, batch 1) of the replay's
    backbones at their own input size, measured as jobs measure them; the Pareto replay reads them."""
    from automl.search.space import DEFAULT_BACKBONES
    from benchmarks import backbone_costs

    names = backbones.split(",") if backbones else list(DEFAULT_BACKBONES)
    measured = backbone_costs.measure(
        names, progress=lambda name, row: out.print(f"  {name}: {row}"))
    table = Table("backbone", "img_size", "params (M)", "MACs (G)", "latency (ms)",
                  title=f"costs on {measured['machine']}, {measured['target']}")
    for name, row in measured["backbones"].items():
        table.add_row(name, str(row["img_size"]), f"{row['params_m']:.2f}", f"{row['macs_g']:.2f}",
                      f"{row['latency_ms']:.1f}")
    out.print(table)
    if write:
        backbone_costs.write(measured)


@app.command()
def portfolio(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False)] = REPLAY_DATA,
    size: Annotated[int, typer.Option(min=1)] = 32,
) -> None:
    """Derive the warm-start portfolios from recorded runs, as the data jobs read.

    `automl-bench portfolio > automl/search/portfolios.json` regenerates the shipped one: a
    portfolio for each dataset size from 1,000 to 128,000 images (doubling); a job takes the
    nearest.
    """
    from benchmarks.replay import derive_portfolios, dump_portfolios, load_pools

    pools = load_pools(data)
    sizes = [1000 * 2**k for k in range(8)]
    portfolios = derive_portfolios(list(pools.values()), size, sizes)
    origin = (f"automl-bench portfolio --size {size}: greedy over the "
              f"{sum(len(p.runs) for p in pools.values())} recorded runs on {len(pools)} datasets")
    print(dump_portfolios(portfolios, origin))


@app.command("curve-model")
def curve_model(
    data: Annotated[Path, typer.Option(exists=True, file_okay=False)] = REPLAY_DATA,
) -> None:
    """Fit the freeze-thaw decision's learning-curve model on every recorded run, as the data
    jobs read: `automl-bench curve-model > automl/search/curve_model.json`."""
    from automl.search.curve_model import fit
    from benchmarks.freeze_thaw_replay import recorded_curves
    from benchmarks.replay import load_pools

    pools = load_pools(data)
    origin = (f"automl-bench curve-model: ridge per epoch bucket over the "
              f"{sum(len(p.runs) for p in pools.values())} recorded runs on {len(pools)} datasets")
    print(fit(recorded_curves(list(pools.values())), origin).dumps())


@app.command()
def distill(
    teacher: Annotated[str, typer.Option(help="the teacher's timm backbone")] = "resnet18",
    students: Annotated[str, typer.Option(help="comma-separated student backbones")] =
        "test_resnet,test_efficientnet",
    epochs: Annotated[int, typer.Option(min=1)] = 12,
    img_size: Annotated[int, typer.Option(min=8, help="the teacher's")] = 32,
    student_size: Annotated[int, typer.Option(min=8, help="the students'")] = 16,
) -> None:
    """Teacher; each student alone, distilled with consistent and with cached teacher targets, and
    the better distilled one as int8: test accuracy, params, latency, and the teacher's cost."""
    from benchmarks.distill import MODES, gap_closed, run

    names = [s.strip() for s in students.split(",") if s.strip()]
    rows = run(teacher, names, epochs, img_size, student_size)
    table = Table("model", "params (M)", "val acc", "test acc", "latency ms", "trial s",
                  "teacher passes", "teacher s",
                  title=f"distillation on builtin:digits, RandAugment, {epochs} epochs each; "
                        "latency: onnxruntime, batch 1, 1 CPU thread; teacher: per student trial")
    for row in rows:
        table.add_row(
            row.model, f"{row.params_m:.3f}",
            "" if row.val_accuracy is None else f"{row.val_accuracy:.4f}",
            f"{row.test_accuracy:.4f}", f"{row.latency_ms:.3f}",
            "" if row.train_seconds is None else f"{row.train_seconds:.0f}",
            "" if row.teacher_forwards is None else str(row.teacher_forwards),
            "" if row.teacher_seconds is None else f"{row.teacher_seconds:.1f}")
    out.print(table)
    for name in names:
        closed = {mode: gap_closed(rows, name, mode) for mode in MODES}
        shares = [f"{100 * c:.0f}% ({mode})" for mode, c in closed.items() if c is not None]
        out.print(f"{name}: distillation closed "
                  + (", ".join(shares) + " of the teacher-minus-student gap" if shares
                     else "no gap (the student alone matched the teacher)"),
                  highlight=False)
        int8 = next(r for r in rows if r.student == name and r.kind == "int8")
        out.print(f"{name}: int8 runs {int8.speedup or 0:.2f}x as fast as its float ONNX model, "
                  f"{100 * (int8.drop or 0):+.2f} points of test accuracy lost", highlight=False)


@app.command()
def api(
    url: Annotated[str | None, typer.Option(
        help="PostgreSQL URL; default $AUTOML_TEST_DATABASE_URL or the local test database")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="jobs in the database")] = 100,
    clients: Annotated[int, typer.Option(min=1, help="concurrent clients per GET route")] = 200,
    requests: Annotated[int, typer.Option(min=1, help="requests per GET route")] = 1000,
) -> None:
    """p50/p95 of the REST API's routes under concurrent clients (`automl serve` on PostgreSQL)."""
    from benchmarks.api_load import run
    from benchmarks.storage_load import DEFAULT_URL

    rows = run(url or os.environ.get("AUTOML_TEST_DATABASE_URL") or DEFAULT_URL, jobs, clients,
               requests)
    table = Table("route", "clients", "requests", "p50 (ms)", "p95 (ms)", "max (ms)", "errors",
                  title=f"automl serve under load: {jobs} jobs, {os.cpu_count()} CPU cores")
    for row in rows:
        table.add_row(row.route, str(row.clients), str(row.requests), f"{row.p50_ms:.0f}",
                      f"{row.p95_ms:.0f}", f"{row.max_ms:.0f}", str(row.errors))
    out.print(table)


@app.command("serve")
def serve_model(
    backbone: Annotated[str, typer.Option(help="timm backbone, randomly initialised")] = "resnet18",
    img_size: Annotated[int, typer.Option(min=8)] = 128,
    seconds: Annotated[float, typer.Option(min=1, help="per client count")] = 10.0,
    threads: Annotated[int, typer.Option(min=1, help="onnxruntime threads, server and raw")] = 1,
) -> None:
    """Throughput and p50/p95 of `automl serve-model` for 1 and 32 clients, against
    onnxruntime alone at the batch sizes the server formed."""
    from benchmarks.serve import run

    result = run(backbone, img_size, seconds, threads)
    table = Table("clients", "requests", "images/s", "p50 (ms)", "p95 (ms)", "errors",
                  "mean batch", "batches by size (le: n)", "server CPU ms/img",
                  "clients' CPU ms/img",
                  title=f"automl serve-model /predict: {result.backbone} at {result.img_size} px, "
                        f"{result.threads} onnxruntime thread(s), {os.cpu_count()} CPU cores")
    for load in result.loads:
        table.add_row(str(load.clients), str(load.requests), f"{load.images_per_s:.1f}",
                      f"{load.p50_ms:.1f}", f"{load.p95_ms:.1f}", str(load.errors),
                      f"{load.mean_batch:.1f}",
                      ", ".join(f"{le}: {n}" for le, n in load.batches.items()),
                      "" if load.server_cpu_ms is None else f"{load.server_cpu_ms:.1f}",
                      f"{load.client_cpu_ms:.1f}")
    out.print(table)
    raw = Table("batch", "images/s", "CPU ms/img",
                title="onnxruntime alone, the same file and threads")
    for row in result.raw:
        raw.add_row(str(row.batch), f"{row.images_per_s:.1f}", f"{row.cpu_ms:.1f}")
    out.print(raw)
    cpu = "" if result.cpu_ratio is None else (
        f"; CPU per image, raw / server: {result.cpu_ratio:.2f}")
    out.print(f"server / raw images/s at {result.loads[-1].clients} clients: {result.ratio:.2f} "
              f"(goal >= 0.8){cpu}", highlight=False)


@app.command()
def soak(
    trials: Annotated[int, typer.Option(min=2)] = 200,
    images: Annotated[int, typer.Option(min=30, help="10 classes, 3 images each at least")] = 10_000,
    url: Annotated[str | None, typer.Option(
        help="PostgreSQL URL; default $AUTOML_TEST_DATABASE_URL or the local test database")] = None,
    at: Annotated[str, typer.Option(help="finished-trial marks to measure at")] = "10,50,100,200",
) -> None:
    """Disk, memory and latency of a many-trial job through `automl serve` + `automl runner`."""
    from benchmarks.soak import run
    from benchmarks.storage_load import DEFAULT_URL

    marks = tuple(int(m) for m in at.split(",") if m.strip())
    rows = run(url or os.environ.get("AUTOML_TEST_DATABASE_URL") or DEFAULT_URL, trials, images,
               marks)
    table = Table("trials", "run (MB)", "TMPDIR", "artifacts", "cache", "db", "RSS driver",
                  "runner", "serve", "overhead/trial (s)", "GET job p95 (ms)", "GET trials p95",
                  "ask p95", "report+prune p95",
                  title=f"soak: {trials} trials, {images:,} images, 2 at a time, "
                        f"{os.cpu_count()} CPU cores (MB unless noted)")
    for r in rows:
        table.add_row(f"{r.finished} (end)" if r.end else str(r.finished),
                      f"{r.run_mb:.1f}", f"{r.tmp_mb:.1f}",
                      f"{r.artifacts_mb:.1f}", f"{r.cache_mb:.1f}", f"{r.database_mb:.1f}",
                      f"{r.driver_rss_mb:.0f}", f"{r.runner_rss_mb:.0f}", f"{r.serve_rss_mb:.0f}",
                      f"{r.overhead_s:.2f}", f"{r.get_job_p95_ms:.0f}", f"{r.get_trials_p95_ms:.0f}",
                      f"{r.ask_p95_ms:.0f}", f"{r.report_prune_p95_ms:.1f}")
    Console(width=200).print(table)


@app.command()
def storage(
    url: Annotated[str | None, typer.Option(
        help="Optuna storage (PostgreSQL); default $AUTOML_TEST_DATABASE_URL or the local test "
             "database")] = None,
    writers: Annotated[int, typer.Option(min=1)] = 32,
    sizes: Annotated[str, typer.Option(help="study sizes (trials), comma-separated")] = "1000,10000",
    epochs: Annotated[int, typer.Option(min=2)] = 5,
    trials: Annotated[int, typer.Option(min=1, help="trials per writer at each size")] = 2,
    pause: Annotated[float, typer.Option(min=0, help="seconds of 'training' per epoch")] = 0.0,
) -> None:
    """p50/p95/max of ask, report, should_prune, tell with W concurrent writers per study size."""
    from benchmarks.storage_load import DEFAULT_URL, run

    url = url or os.environ.get("AUTOML_TEST_DATABASE_URL") or DEFAULT_URL
    try:
        study_sizes = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        raise typer.BadParameter(f"--sizes: expected numbers like 1000,10000, got {sizes!r}") from None
    result = run(url=url, writers=writers, sizes=study_sizes, epochs=epochs, trials=trials,
                 pause=pause)
    table = Table("trials", "op", "calls", "p50", "p95", "max", "CPU p50", "CPU p95",
                  title=f"storage under load (ms): {result.writers} writer processes, "
                        f"{result.cpus} CPU cores, {epochs} epochs")
    for row in result.rows:
        table.add_row(f"{row.size:,}", row.op, str(row.calls), f"{row.p50_ms:.1f}",
                      f"{row.p95_ms:.1f}", f"{row.max_ms:.1f}", f"{row.cpu_p50_ms:.1f}",
                      f"{row.cpu_p95_ms:.1f}", end_section=row.op == result.rows[-1].op)
    out.print(table)
    once = Table("trials", "bulk pre-fill", "driver's first read", "read again, same storage",
                 title="once per study / per request (s)")
    for size in study_sizes:
        once.add_row(f"{size:,}", f"{result.fill_s[size]:.1f}", f"{result.load_s[size]:.2f}",
                     f"{result.reload_s[size]:.2f}")
    out.print(once)
    out.print("targets at 10,000 trials: p95 report + should_prune < 20 ms, p95 ask < 150 ms. "
              "ask = study.ask + sampling the configuration + the bridge's 2 user attrs. "
              "CPU = the writer's own CPU time in the call; the rest of the wall time is the "
              "database and, with more writers than cores, waiting for a core.")


@app.command()
def evaluate(
    sizes: Annotated[str, typer.Option(help="comma-separated image counts")] = "10000,100000",
    corruptions_up_to: Annotated[int, typer.Option(
        help="also run the corruption suite on sizes up to this many images")] = 100_000,
    data_dir: Annotated[Path | None, typer.Option(
        help="where the generated PNG tables live between runs; default "
             "$AUTOML_BENCH_DIR/evaluation or ~/.cache/automl/bench/evaluation")] = None,
) -> None:
    """`automl evaluate` of a tiny model at 10k and 100k images, with and without corruptions:
    seconds, images/s, peak RSS (a process per row) and the report's JSON size."""
    from benchmarks.evaluation import run

    try:
        counts = tuple(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--sizes: expected numbers like 10000,100000, got {sizes!r}") from None
    decodes, rows = run(counts, corruptions_up_to, data_dir)
    table = Table("images", "corruptions", "seconds", "images/s", "peak RSS (MB)",
                  "report JSON (KB)", title="automl evaluate: test_resnet at 32 px, 10 classes, "
                  f"PNGs in parquet, {len(os.sched_getaffinity(0))} CPU cores, "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for row in rows:
        table.add_row(f"{row.images:,}", "yes (18 more passes)" if row.corruptions else "no",
                      f"{row.seconds:.1f}", f"{row.images / row.seconds:,.0f}",
                      f"{row.peak_rss_bytes / 1e6:.0f}", f"{row.report_bytes / 1e3:.0f}")
    out.print(table)
    for d in decodes:
        out.print(f"before the rows, once: decoding {d.images:,} PNGs into the cache took "
                  f"{d.seconds:.1f} s (peak RSS {d.peak_rss_bytes / 1e6:.0f} MB)",
                  highlight=False)


def main() -> None:
    from automl.settings import quiet_optuna

    quiet_optuna()
    app()
