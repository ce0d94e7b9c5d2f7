"""What the commands show: the live view of a running job (fed by the bridge's events), a job's
status panel, the table of jobs, and a finished job's outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

STYLES = {"running": "cyan", "paused": "blue", "complete": "green", "pruned": "yellow", "failed": "red",
          "over_limit": "magenta"}  # over a cost limit: never trained


@dataclass
class _Row:
    state: str = "running"
    epochs: int = 0
    last: float | None = None
    best: float | None = None
    note: str | None = None  # why it ended so: the limits an over-limit trial broke


@dataclass
class LiveView:
    """Counts by state, the best trial so far, the budget, and the latest trials."""

    job_id: str
    n_trials: int
    maximize: bool
    metric: str
    time_limit: float | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True))
    rows: dict[int, _Row] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _live: Live | None = None

    def on_event(
        self, kind: str, number: int, value: float | None = None, epoch: int | None = None,
        note: str | None = None,
    ) -> None:
        row = self.rows.setdefault(number, _Row())
        row.note = note or row.note
        if kind == "report" and value is not None:
            row.epochs = max(row.epochs, epoch) if epoch is not None else row.epochs + 1
            row.last = value
            if row.best is None or (value > row.best if self.maximize else value < row.best):
                row.best = value
        elif kind in STYLES:
            row.state = kind
        if self._live is not None:
            self._live.update(self.render())

    def best(self) -> tuple[int, float] | None:
        """The best epoch of a trial that can still be the job's best: a pruned or failed trial
        is never published, however well one of its epochs scored."""
        scored = [(n, r.best) for n, r in self.rows.items()
                  if r.best is not None and r.state in ("running", "complete")]
        from automl.search.ranking import best_by  # not at import: `automl --help` loads no Optuna

        best = best_by(scored, lambda item: item[1], self.maximize)
        return None if best is None else (best[0], float(best[1]))

    def render(self) -> RenderableType:
        elapsed = time.monotonic() - self.started
        counts = {state: sum(r.state == state for r in self.rows.values()) for state in STYLES}
        header = Text.assemble(
            (f"job {self.job_id}", "bold"),
            f"   trials {len(self.rows)}/{self.n_trials}   elapsed {_clock(elapsed)}",
            f" of {_clock(self.time_limit)}" if self.time_limit else "",
        )
        tally = Text("   ").join(
            Text(f"{state} {counts[state]}", style=style) for state, style in STYLES.items()
        )
        best = self.best()
        best_line = Text(
            f"best so far: trial {best[0]}, {self.metric} {best[1]:.4f}" if best else "best so far: -"
        )
        table = Table(box=None, pad_edge=False, header_style="dim")
        for column in ("trial", "state", "epochs", "last", "best"):
            table.add_column(column, justify="right" if column != "state" else "left")
        for number in sorted(self.rows)[-8:]:
            row = self.rows[number]
            table.add_row(
                str(number),
                Text(row.state + (f" ({row.note})" if row.note else ""),
                     style=STYLES.get(row.state, "")),
                str(row.epochs),
                _fmt(row.last),
                _fmt(row.best),
            )
        return Group(header, tally, best_line, table)

    def __enter__(self) -> LiveView:
        self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(exc_type, exc, tb)
            self._live = None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if TYPE_CHECKING:
    from automl.jobs.outcome import JobOutcome
    from automl.service.views import JobPage, JobView, ParetoView


def status_panel(view: JobView) -> Text:
    t, best = view.trials, view.best
    stopping = view.cancel_requested and view.state == "running"
    lines = [
        f"job {view.id}: {view.state}" + (" (cancel requested)" if stopping else ""),
        f"trials: {t.running} running, " + (f"{t.paused} paused, " if t.paused else "")
        + f"{t.complete} complete, {t.pruned} pruned, {t.failed} failed, budget {t.budget}",
        "best so far: -" if best.value is None else
        f"best so far: trial {best.trial}, {view.objective} {best.value:.4f}",
        f"dashboard: {view.dashboard}",
    ]
    if view.test_metrics:
        lines.append(f"test accuracy: {view.test_metrics.get('test_accuracy', float('nan')):.4f}")
    if view.error:
        lines.append(f"error: {view.error}")
    return Text("\n".join(lines))


def jobs_table(page: JobPage) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("job", "state", "trials c/p/f of n", "best", "created (UTC)"):
        table.add_column(name, no_wrap=True)
    for job in page.jobs:
        t, best = job.trials, job.best
        paused = f", {t.paused} paused" if t.paused else ""  # freeze-thaw: may still resume
        table.add_row(
            job.id, job.state, f"{t.complete}/{t.pruned}/{t.failed} of {t.budget}{paused}",
            "-" if best.value is None else f"{best.value:.4f} (trial {best.trial})",
            job.created_at.strftime("%Y-%m-%d %H:%M") if job.created_at else "",
        )
    return table


def pareto_table(view: ParetoView) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["trial", view.metric, *view.costs, "backbone", "img_size", "test accuracy"]
    for name in columns:
        table.add_column(name, no_wrap=True)
    for m in view.members:
        test = m.test_metrics.get("test_accuracy")
        table.add_row(str(m.trial), f"{m.metric:.4f}",
                      *(f"{m.costs.get(c, float('nan')):.4g}" for c in view.costs),
                      m.backbone or "-", str(m.img_size or "default"),
                      "-" if test is None else f"{test:.4f}")
    return table


def print_outcome(outcome: JobOutcome, metric: str, settings: Any, flags: str,
                  err: Console) -> None:
    from storage.optuna_storage import redact

    counts = outcome.counts
    out = Console()
    err.print()
    out.print(
        f"job {outcome.job_id} {outcome.state} in {outcome.elapsed:.0f}s: "
        f"{counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed",
        highlight=False,
    )
    if outcome.state != "succeeded":
        out.print(f"error: {outcome.error}", highlight=False, soft_wrap=True)
        return
    if outcome.error:  # its distill stage failed: the search's result stands
        out.print(f"warning: {outcome.error}", highlight=False, soft_wrap=True)
    test = outcome.test_metrics
    out.print(
        f"best trial {outcome.best_trial}: {metric} {outcome.best_value:.4f} (validation), "
        f"test accuracy {test.get('test_accuracy', float('nan')):.4f} on "
        f"{test.get('test_images', 0)} held-out images",
        highlight=False,
        soft_wrap=True,
    )
    t = outcome.timings
    out.print(
        f"orchestration: ray start {t.get('ray_start', 0):.1f}s, database {t.get('database', 0):.1f}s, "
        f"test evaluation + publish {t.get('publish', 0):.1f}s"
        + (f", distill stage {t['distill']:.0f}s" if "distill" in t else ""),
        highlight=False,
    )
    out.print(
        f"checkpoint: Optuna artifacts of trial {outcome.best_trial} in {settings.artifacts_path}",
        highlight=False, soft_wrap=True,
    )
    out.print(f"  pull it:   automl pull {outcome.job_id} --out model/{flags}", highlight=False,
              soft_wrap=True)
    out.print("  predict:   automl predict --checkpoint model/ IMAGE...", highlight=False)
    out.print(f"  dashboard: automl dashboard{flags}   (optuna-dashboard on "
              f"{redact(settings.storage_url)})", highlight=False, soft_wrap=True)
    if outcome.deployable is not None:
        print_deployable(outcome.job_id, outcome.deployable, flags)


def print_deployable(job_id: str, summary: dict[str, Any], flags: str) -> None:
    """The distill stage's comparison (`automl.jobs.deployable`) and how to pull its model."""
    from automl.jobs.deployable import int8_verdict

    out = Console()
    if not out.is_terminal:  # a log or a pipe: rows on one line each, not wrapped at 80
        out = Console(width=200)
    limits = ", ".join(f"{k} <= {v:g}" for k, v in summary["limits"].items()) or "none"
    table = Table(title=f"deployable model of {job_id} (student limits: {limits}; latency on "
                  f"{summary['target']})", box=None, pad_edge=False, header_style="bold",
                  title_justify="left")
    for name in ("model", "trial", "backbone", "test accuracy", "params M", "MACs G",
                 "latency ms"):
        table.add_column(name)
    for row in summary["rows"]:
        if row.get("trial") is None:
            continue
        table.add_row(row["model"], f"{row['study']}#{row['trial']}", str(row["backbone"]),
                      _fmt(row.get("test_accuracy")), _num(row.get("params_m")),
                      _num(row.get("macs_g")), _num(row.get("latency_ms")))
    out.print(table)
    out.print(int8_verdict(summary["int8"]), highlight=False, soft_wrap=True)
    out.print(f"  pull it:   automl pull {job_id} --deployable --out deployable/{flags}",
              highlight=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
