"""The `automl` command line (typer + rich: only this package imports them). Progress goes to
stderr, results to stdout; a user error is one line and exit code 2 (`common.Commands`)."""

from __future__ import annotations

import typer

from automl.cli import deploy, evaluation, jobs, models, monitoring, serve, serving
from automl.cli.common import Commands

app = typer.Typer(
    cls=Commands,
    help="Hyperparameter search for fine-tuning pretrained image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(jobs.run)
app.command()(jobs.submit)
app.command("list")(jobs.list_jobs)
app.command()(jobs.status)
app.command()(jobs.cancel)
app.command()(jobs.resume)
app.command()(jobs.pull)
app.command()(jobs.push)
app.command()(jobs.pareto)
app.command()(jobs.distill)
app.command("train-one")(models.train_one)
app.command()(models.predict)
app.command()(models.export)
app.command()(evaluation.evaluate)
app.command()(deploy.deploy)
app.command()(monitoring.monitor)
app.command()(serve.serve)
app.command()(serve.dashboard)
app.command()(serve.runner)
app.command("serve-model")(serving.serve_model)


def main() -> None:
    from automl.settings import quiet_optuna

    quiet_optuna()
    app()
