"""The artifact store: where a finished job's best checkpoint and reports live (Optuna artifacts).

A local path (the embedded default, or a volume shared by the deployment) or `s3://bucket`
(needs boto3). optuna-dashboard reads the same store, so it shows what `automl pull` downloads.
Optuna is imported only to open a store: settings check a location without paying for it.

Files go in and come out with their size and sha256 (`put`, `get`): a store can keep a file
short (a full disk) or change it later, and neither Optuna's store nor its records notice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeAlias

if TYPE_CHECKING:
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

ArtifactStore: TypeAlias = "FileSystemArtifactStore | Boto3ArtifactStore"  # `artifact_store`'s
log = logging.getLogger(__name__)
_CHUNK = 1 << 20


class StoredCopyDiffers(RuntimeError):
    """The store gave back a file other than the one written to it (short, or changed)."""


@dataclass(frozen=True)
class Digest:
    """What a file's copy must match: its size and sha256 (hex)."""

    size: int
    sha256: str

    def describe_difference(self, copy: Digest, done: str) -> str:
        """How `copy` differs from the file that was `done` ("written", "published")."""
        if copy.size != self.size:
            return f"{copy.size:,} bytes of the {self.size:,} {done}"
        return f"its sha256 is not the one {done}"


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


def digest(reader: BinaryIO, copy_to: BinaryIO | None = None) -> Digest:
    """The size and sha256 of what `reader` gives, copied on to `copy_to` as it is read."""
    sha, size = hashlib.sha256(), 0
    while chunk := reader.read(_CHUNK):
        sha.update(chunk)
        size += len(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return Digest(size, sha.hexdigest())


def put(store: ArtifactStore, path: Path, written: list[str]) -> tuple[str, Digest]:
    """Write `path` to the store under a fresh artifact id (appended to `written` before the
    first byte goes, so that a caller can remove a partial copy), then read it back: returns
    the id and the file's digest, or raises `StoredCopyDiffers`."""
    with path.open("rb") as file:
        expected = digest(file)
        file.seek(0)
        artifact_id = str(uuid.uuid4())
        written.append(artifact_id)
        store.write(artifact_id, file)
    with contextlib.closing(store.open_reader(artifact_id)) as reader:
        copy = digest(reader)
    if copy != expected:
        raise StoredCopyDiffers(f"{path.name}: {expected.describe_difference(copy, 'written')}")
    return artifact_id, expected


def get(store: ArtifactStore, artifact_id: str, path: Path) -> Digest:
    """Copy an artifact to `path` (a new file); returns the digest of what was copied.
    Raises optuna's ArtifactNotFound when the store has no such artifact."""
    with contextlib.closing(store.open_reader(artifact_id)) as reader, path.open("xb") as file:
        return digest(reader, file)


def remove_quietly(store: ArtifactStore, artifact_ids: Iterable[str]) -> None:
    """Remove artifacts, as many as can be: what is left is unreferenced, not wrong."""
    for artifact_id in artifact_ids:
        try:
            store.remove(artifact_id)
        except Exception as error:  # best effort: a missing file, or a store that went away
            log.warning("could not remove artifact %s: %s", artifact_id, error)


def where(location: str) -> str:
    """A store's location as an error message names it: the bucket, or the folder resolved."""
    return location if location.startswith("s3://") else str(Path(location).expanduser().resolve())
