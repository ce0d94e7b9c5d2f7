"""A Ray Tune internal the bridge relies on, at the Ray pinned in requirements.lock.

Tune retries a failed trial (`FailureConfig.max_failures`) whatever failed it, a lost worker or
the trial's own exception alike, and no public API marks an error as not worth a retry. When a
failure reaches it, Tune counts it and recovers the trial while the count is within that trial's
own `max_failures` attribute (`Trial.handle_error`, then `Trial.should_recover`, in
`TuneController._process_trial_failure`). So an attribute set to 0 before the failure arrives
makes it final. tests/tune/test_ray_internals.py checks this against the installed Ray.
"""

from __future__ import annotations

from ray.tune.experiment import Trial


def no_retries(trial: Trial) -> None:
    """The trial's next failure is its last: Tune fails it rather than run it again."""
    trial.max_failures = 0
