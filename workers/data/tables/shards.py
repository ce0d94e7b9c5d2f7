"""Finding a table dataset's files (shards) and the split each belongs to."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.data.index import DatasetError
from workers.data.roots import confined, is_dir, is_file
from workers.data.tables.arrow import row_count

TABLE_SUFFIXES = (".parquet", ".arrow")
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_PREFIX = re.compile(r"^(train|validation|valid|val|test)(?:$|[-_.])")


@dataclass(frozen=True)
class Shard:
    """One table file: parquet, or an Arrow IPC stream as `save_to_disk` writes them."""

    path: Path
    rows: int
    split: str | None  # train / val / test when its name or folder says so

    @property
    def arrow(self) -> bool:
        return self.path.suffix == ".arrow"


def shard_folders(path: Path) -> list[Path]:
    return [path, *(path / name for name in (*SPLIT_FOLDERS, "data") if is_dir(path / name))]


def find_shards(path: Path) -> list[Shard]:
    if path.is_file():
        return [_shard(path, None)]
    if is_file(path / "dataset_dict.json"):
        return _dataset_dict_shards(path)
    if is_file(path / "state.json"):
        return _saved_dataset_shards(path, None)
    shards = []
    for folder in shard_folders(path):
        in_split = SPLIT_ALIASES.get(folder.name) if folder != path else None
        for file in sorted(folder.glob("*.parquet")):
            shards.append(_shard(file, in_split or _split_of(file.stem)))
    named = [s for s in shards if s.split is not None]
    if named and len(named) < len(shards):
        orphan = next(s for s in shards if s.split is None)
        raise DatasetError(
            f"{orphan.path} belongs to no split while other shards do; name each file after its "
            "split (train-00000-of-00002.parquet, validation-..., test-...) or put it in a "
            "train/ val/ or test/ folder"
        )
    return shards


def _split_of(stem: str) -> str | None:
    match = _SPLIT_PREFIX.match(stem.lower())
    return SPLIT_ALIASES[match.group(1)] if match else None


def _dataset_dict_shards(path: Path) -> list[Shard]:
    splits = read_json(path / "dataset_dict.json").get("splits") or []
    shards = []
    for name in splits:
        split = SPLIT_ALIASES.get(str(name).lower())
        if split is None:
            raise DatasetError(
                f"{path / 'dataset_dict.json'} lists a split that is not train, validation or "
                "test; save the DatasetDict without it, or point source at one split's folder"
            )
        shards += _saved_dataset_shards(path / str(name), split)
    if not shards:
        raise DatasetError(f"{path / 'dataset_dict.json'} lists no splits")
    return shards


def _saved_dataset_shards(folder: Path, split: str | None) -> list[Shard]:
    files = read_json(folder / "state.json").get("_data_files") or []
    if not files:
        raise DatasetError(f"{folder / 'state.json'} lists no data files; save the dataset again")
    shards = []
    for number, entry in enumerate(files, 1):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{folder / 'state.json'}: data file {number} has no filename; "
                               "save the dataset again")
        # the name is the file's content: resolved under the roots before it is looked at
        where = f"{folder / 'state.json'}: data file {number}"
        shards.append(_shard(confined(folder / name, where), split, where))
    return shards


def read_json(path: Path) -> dict[str, Any]:
    confined(path, str(path))
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; save the dataset again") from None
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path} is not readable JSON ({type(error).__name__})") from error
    if not isinstance(loaded, dict):
        raise DatasetError(f"{path} is not a JSON object; save the dataset again")
    return loaded


def _shard(path: Path, split: str | None, named_by: str | None = None) -> Shard:
    """`named_by`: what named a path a file holds (state.json's entry), said instead of it."""
    where = named_by or str(confined(path, str(path)))
    if not path.is_file():
        raise DatasetError(f"{where} does not exist; download or save the dataset again")
    rows = row_count(path)
    if rows == 0:
        raise DatasetError(f"{where} has no rows; download it again or remove it")
    return Shard(path, rows, split)
