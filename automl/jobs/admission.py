"""What a job sent over HTTP may name: files under the service's dataset roots only, and the
service's own MLflow server only. A job file run by its owner (`automl run`/`submit`) answers to
no such rule: it reads what its owner can."""

from __future__ import annotations

from pathlib import Path

from automl.errors import SpecError
from automl.search.paths import check_weights, paths_read
from automl.search.spec import JobSpec
from automl.search.validation_errors import excerpt
from workers.data.roots import is_under


def require_absolute_dataset(spec: JobSpec) -> None:
    """Jobs sent over HTTP have no job file to be relative to."""
    for field, value in paths_read(spec):
        if not Path(value).is_absolute():
            raise SpecError(
                f"{field}={excerpt(value)} is a relative path; give the absolute path the "
                "cluster's machines see (or submit the job file with `automl submit`, which "
                "resolves it)"
            )


def require_under_roots(spec: JobSpec, roots: tuple[Path, ...]) -> None:
    """A job sent over HTTP reads only under the service's dataset roots, judged after `..` and
    symlinks are resolved: the runner may read much more (it runs as whoever deployed it), and a
    token must not be a key to its files. Every path the spec names is judged before any is
    opened, and every path outside gets the same answer, so nothing is said of what is there or
    whether it exists, nor where the roots are (the operator's setting); the weights files are
    checked after."""
    require_absolute_dataset(spec)
    for field, value in paths_read(spec):
        if not is_under(value, roots):
            where = ("the dataset roots (AUTOML_DATASET_ROOTS)" if roots else
                     "any dataset root: this service has none (AUTOML_DATASET_ROOTS), so jobs "
                     "sent over HTTP may use builtin datasets only")
            raise SpecError(
                f"{field}={excerpt(value)} is outside {where}; put the files under a root, or "
                "ask the operator to add one"
            )
    check_weights(spec)


def require_tracking_server(spec: JobSpec, served: str | None) -> None:
    """A job sent over HTTP tracks to the service's own MLflow store (`served`,
    AUTOML_MLFLOW_URI) or to none: any other URI would have the runner write wherever the token
    holder names (a local one), or call any server the runner can reach and report what it
    answered (a remote one: an internal service)."""
    uri = spec.tracking.mlflow
    if uri is None or (served is not None and uri.rstrip("/") == served.rstrip("/")):
        return
    if served is None:
        raise SpecError(
            f"tracking.mlflow={excerpt(uri)}: jobs sent over HTTP track only to this service's "
            "MLflow server, and it has none (AUTOML_MLFLOW_URI is not set); leave "
            "tracking.mlflow out"
        )
    raise SpecError(
        f"tracking.mlflow={excerpt(uri)}: jobs sent over HTTP track only to this service's "
        "MLflow server (AUTOML_MLFLOW_URI); leave tracking.mlflow out to use it"
    )
