"""The artifact store: where a finished job's best checkpoint and reports live (Optuna artifacts).

A local path (the embedded default, or a volume shared by the deployment) or `s3://bucket`
(needs boto3). optuna-dashboard reads the same store, so it shows what `automl pull` downloads.
Optuna is imported only to open a store: settings check a location without paying for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

ArtifactStore: TypeAlias = "FileSystemArtifactStore | Boto3ArtifactStore"  # `artifact_store`'s


class ArtifactLocationError(ValueError):
    """A location no artifact store can be opened at; the message says which form to give."""


def check_location(location: str) -> str:
    """`location`, if a store can be opened there; the setting that holds it calls this first,
    so a wrong one is refused before a job runs rather than when it publishes."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket or prefix:
            fix = f"s3://{bucket}" if bucket else "s3://BUCKET"
            raise ArtifactLocationError(
                f"{location} is not an artifact store: S3 takes a bucket only, give {fix}")
    return location


def artifact_store(location: str, create: bool = True) -> ArtifactStore:
    """`create=False` for readers: a wrong path must not leave an empty store behind."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    if check_location(location).startswith("s3://"):
        return Boto3ArtifactStore(location.removeprefix("s3://").rstrip("/"))
    path = Path(location).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
