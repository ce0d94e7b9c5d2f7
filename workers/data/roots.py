"""Confinement to a service's dataset roots: every path a dataset names, or indexing looks into,
is checked to resolve under them before it is tested or opened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from workers.data.index import DatasetError

# The dataset roots the index being built is confined to (none: any path its user can read)
_ROOTS: ContextVar[tuple[Path, ...]] = ContextVar("dataset_roots", default=())


def is_under(path: str | Path, roots: tuple[Path, ...]) -> bool:
    """Whether `path`, resolved (`..`, symlinks), lies under one of `roots` (resolved). A path
    that cannot be resolved (a symlink loop, a NUL) lies under none."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return any(resolved.is_relative_to(root) for root in roots)


@contextlib.contextmanager
def confined_to(roots: tuple[Path, ...]) -> Iterator[None]:
    """Index only under `roots` (a service's dataset roots) while in this block."""
    token = _ROOTS.set(tuple(roots))
    try:
        yield
    finally:
        _ROOTS.reset(token)


def confined(path: Path, where: str) -> Path:
    """`path`, once it is known to resolve under the dataset roots (when there are any).

    Called on every path a dataset's files name, and every file or folder indexing looks
    into, before it is tested or opened: everything outside gets this one answer, so an
    error tells neither what is there nor whether it exists. Nor where the roots are: that is
    the operator's setting, and the answer goes to whoever sent the job.
    """
    roots = _ROOTS.get()
    if roots and not is_under(path, roots):
        raise DatasetError(
            f"{where} resolves outside the dataset roots (AUTOML_DATASET_ROOTS); this service "
            "reads only under them"
        )
    return path


def is_dir(path: Path) -> bool:
    """A folder, once `path` is known to lie under the roots."""
    return confined(path, str(path)).is_dir()


def is_file(path: Path) -> bool:
    """A file, once `path` is known to lie under the roots."""
    return confined(path, str(path)).is_file()
