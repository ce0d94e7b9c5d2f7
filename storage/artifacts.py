"""The artifact store: where a finished job's best checkpoint and reports live (Optuna artifacts).

A local path (the embedded default, or a volume shared by the deployment) or `s3://bucket/prefix`
(needs boto3). optuna-dashboard reads the same store, so it shows what `automl pull` downloads.
"""

from __future__ import annotations

from pathlib import Path

from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

ArtifactStore = FileSystemArtifactStore | Boto3ArtifactStore  # what `artifact_store` returns


def artifact_store(location: str, create: bool = True) -> ArtifactStore:
    """`create=False` for readers: a wrong path must not leave an empty store behind."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if prefix:
            raise ValueError(f"artifact store {location}: give a bucket only (s3://bucket)")
        return Boto3ArtifactStore(bucket)
    path = Path(location).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))
