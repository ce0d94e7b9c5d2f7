"""How a published model names its dataset."""

from __future__ import annotations

from pathlib import Path


def dataset_name(source: str, name: str | None = None) -> str:
    """`dataset.name`, else the source's last folder (the folder of a manifest or a parquet
    file), never the server's path to it: a model card is pushed to the Hugging Face Hub as it
    is."""
    if name:
        return name
    if source.startswith("builtin:"):
        return source.removeprefix("builtin:")
    path = Path(source)
    folder = path.parent if path.is_file() else path
    return folder.name or "images"
