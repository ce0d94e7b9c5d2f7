"""One entry point from a dataset source to its index, dispatching on the kind of source.

Four sources: an ImageFolder tree (one folder per class, or `train/ val/ [test/]` folders each
holding class folders), a CSV manifest with `path,label` columns, `builtin:digits`, and tables
as the Hugging Face hub ships image datasets (parquet shards, `save_to_disk` folders). The table
reader is imported only for a table source: it needs pyarrow, which other sources do not.
"""

from __future__ import annotations

from pathlib import Path

from workers.config import DataConfig
from workers.data.digits import ensure_digits
from workers.data.folders import scan_class_folders, user_split
from workers.data.index import DatasetError, DatasetIndex
from workers.data.manifest import read_manifest
from workers.data.roots import confined, confined_to, is_dir
from workers.data.split import with_split


def load_index(data: DataConfig, roots: tuple[Path, ...] = ()) -> DatasetIndex:
    """Index `data.source` and split it (stratified by seed unless the user gave split folders).

    With `roots` (a service's dataset roots), every path the dataset names or indexing looks
    into must resolve under them (`confined`); without, any path its user can read is read.
    """
    if data.source.startswith("builtin:"):
        roots = ()  # bundled with the engine, in its own cache folder
    with confined_to(roots):
        return _load_index(data)


def _load_index(data: DataConfig) -> DatasetIndex:
    from workers.data.tables.reader import is_table_source, load_table_index

    source = data.source
    path = Path(source).expanduser()
    if not source.startswith("builtin:"):
        confined(path, "dataset.source")
    if path.exists() and is_table_source(path):
        return load_table_index(path, data)
    if data.image_column is not None or data.label_column is not None:
        setting = "image_column" if data.image_column is not None else "label_column"
        raise DatasetError(
            f"{setting} names a column of parquet or arrow files; {source!r} is not one, so "
            f"remove {setting} (an ImageFolder's labels are its folders, a CSV's its label column)"
        )
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name != "digits":
            raise DatasetError(
                f"unknown builtin dataset {source!r}; the bundled one is builtin:digits"
            )
        root = ensure_digits()
        classes, paths, labels = scan_class_folders(root)
        return with_split(classes, paths, labels, data)
    if not path.exists():
        raise DatasetError(
            f"dataset {source!r} does not exist; give an ImageFolder directory, a CSV manifest "
            "(path,label), parquet files, a save_to_disk folder or builtin:digits"
        )
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(
                f"dataset file {path} is not a .csv manifest with path,label columns, "
                "nor a .parquet or .arrow table"
            )
        classes, paths, labels = read_manifest(path)
        return with_split(classes, paths, labels, data)
    if is_dir(path / "train") and is_dir(path / "val"):
        return user_split(path)
    classes, paths, labels = scan_class_folders(path)
    return with_split(classes, paths, labels, data)
