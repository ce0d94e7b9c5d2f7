"""Experiment tracking in MLflow: the job is a parent run, each trial a run nested in it.

- `runs`: the job's runs (`JobRuns`), found again by their tags and never made twice (the parent
  by the job id, a trial's run by its Optuna trial number, so a resumed job, a retried trial and
  a trial adopted after a driver restart go on in the run they had); a result is one
  `log_batch` call; a trial's run ends in the study's words (`automl.state`: complete, pruned at
  which epoch, over which limit, failed with what); the parent run carries the job's result.
- `callback`: the Ray Tune `LoggerCallback` that drives the trial side from the driver (workers
  need no MLflow access).
- `failure`: what went wrong with the tracking store, in words safe to show.

Tracking never fails a running job: an MLflow call that fails mid-job is a warning and the
trials go on. A tracking store that cannot be reached at all stops the job before it starts.
Only this package imports mlflow, and only inside its functions: untracked jobs never load it.
"""
