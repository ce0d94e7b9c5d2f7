"""What `automl serve-model NAME_OR_FOLDER` serves: the ONNX file, its served name and version,
and the batching its model repository's config.pbtxt asks for.

config.pbtxt is Triton's protobuf text format; the server reads two fields of it,
`max_batch_size` and `dynamic_batching { max_queue_delay_microseconds }`, with a small reader
rather than protobuf and Triton's schema (dev-only dependencies: a serving node has neither).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from serving.errors import ModelError
from serving.repository import CONFIG, MODEL, version_dir

_MAX_BATCH = re.compile(r"^\s*max_batch_size\s*:\s*(\d+)", re.MULTILINE)
_MAX_DELAY = re.compile(r"\bmax_queue_delay_microseconds\s*:\s*(\d+)")


@dataclass(frozen=True)
class Resolved:
    path: Path  # the ONNX file
    name: str
    version: str
    max_batch: int | None  # from config.pbtxt, when the model has one
    max_wait_ms: float | None


def resolve(target: str, repository: Path, name: str | None = None) -> Resolved:
    """`target`: a folder holding model.onnx (a repository version, or any folder such as
    `automl pull --deployable` wrote), an ONNX file, a model folder of a repository (its latest
    version), or a model's name in `repository`."""
    given = Path(target)
    if given.is_file():
        return _found(given, given.parent, name)
    if given.is_dir():
        if (given / MODEL).is_file():
            return _found(given / MODEL, given, name)
        latest = version_dir(given)
        if latest is None:
            raise ModelError(f"{target} holds no {MODEL} and no numbered version folder with "
                             f"one (the layout `automl deploy` writes)")
        return _found(latest / MODEL, latest, name)
    if "/" not in target and "\\" not in target and target not in ("", ".", ".."):
        model_dir = repository / target
        latest = version_dir(model_dir)
        if latest is not None:
            return _found(latest / MODEL, latest, name)
        if model_dir.is_dir():
            raise ModelError(f"model {target!r} in {repository} has no version with a "
                             f"{MODEL}; deploy it again with `automl deploy`")
    raise ModelError(f"no folder {target} and no model named {target!r} in the model "
                     f"repository {repository} (`automl deploy` puts models there; "
                     "--repository names another)")


def _found(path: Path, folder: Path, name: str | None) -> Resolved:
    """A version folder of a repository (its parent has config.pbtxt, its name is a number)
    is named by its model; any other folder by itself."""
    folder = folder.resolve()
    config = folder.parent / CONFIG
    in_repository = folder.name.isdigit() and config.is_file()
    batch, wait = read_batching(config) if in_repository else (None, None)
    served = name or (folder.parent.name if in_repository else folder.name)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", served):
        raise ModelError(f"{served[:130]!r} cannot be a served model's name (its URL path): "
                         "use letters, digits, '_', '.', '-' (--name)")
    return Resolved(path, served, folder.name if in_repository else "1", batch, wait)


def read_batching(config: Path) -> tuple[int | None, float | None]:
    """(max_batch_size, max_queue_delay in ms) of a config.pbtxt; None for a field it lacks
    (max_batch_size 0, Triton's "no batch dimension", counts as lacking: this server's models
    always have one)."""
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ModelError(f"cannot read {config}: {error.strerror}") from error
    batch, delay = _MAX_BATCH.search(text), _MAX_DELAY.search(text)
    size = int(batch.group(1)) if batch else 0
    return (size or None), (int(delay.group(1)) / 1000.0 if delay else None)
