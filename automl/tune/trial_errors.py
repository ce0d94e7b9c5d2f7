"""A failed Ray trial's error, as the job's own errors give it: its last line."""

from __future__ import annotations

from pathlib import Path

from ray.tune.experiment import Trial as RayTrial

from workers.errors import last_line


def last_error_line(trial: RayTrial) -> str | None:
    """The last line of a failed Ray trial's error, as the job's own errors give it."""
    # error.txt where the driver writes it first, else in the trial's storage (local or remote)
    local = trial.error_file
    text = (Path(local).read_text(errors="replace") if local and Path(local).exists()
            else trial.get_error())
    return last_line(str(text or ""), 500) or None


def trial_errors(run_folder: Path) -> dict[str, str]:
    """The last error line of each failed trial of a job's Ray run, by Ray trial id (what a
    trial's run says it failed with, when Tune ended it before the study was told)."""
    from ray import tune

    if not tune.Tuner.can_restore(str(run_folder)):
        return {}
    trials = tune.ExperimentAnalysis(str(run_folder)).trials
    return {t.trial_id: line for t in trials
            if t.status == RayTrial.ERROR and (line := last_error_line(t)) is not None}
