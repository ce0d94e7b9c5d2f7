"""Indexing a table dataset: its labels, classes and splits, without reading any image bytes."""

from __future__ import annotations

from pathlib import Path

from workers.config import DataConfig
from workers.data.index import DatasetError, DatasetIndex, require_two_classes
from workers.data.roots import is_file
from workers.data.tables.arrow import read_schema
from workers.data.tables.columns import (
    class_names,
    column_said,
    declared_features,
    image_column,
    info_features,
    label_column,
    missing_column,
)
from workers.data.tables.images import image_references
from workers.data.tables.labels import class_ids, read_labels, split_rows
from workers.data.tables.shards import TABLE_SUFFIXES, find_shards, shard_folders


def is_table_source(path: Path) -> bool:
    """A parquet/arrow file, a `save_to_disk` folder, or a folder of parquet shards (directly,
    in split folders, or in `data/` as a Hub repository lays them out)."""
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if is_file(path / "state.json") or is_file(path / "dataset_dict.json"):
        return True
    return any(next(folder.glob("*.parquet"), None) for folder in shard_folders(path))


def load_table_index(path: Path, data: DataConfig) -> DatasetIndex:
    """Index a table dataset: its labels, classes and splits, without reading any image bytes."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DatasetError(
            f"{path} is a parquet/arrow dataset and reading one needs pyarrow; install it "
            "(pip install pyarrow) on every machine that runs trials"
        ) from None
    shards = find_shards(path)
    first = read_schema(shards[0])
    features = declared_features(first, info_features(shards[0].path.parent))
    image = image_column(first, features, data.image_column, shards[0].path)
    label = label_column(first, features, data.label_column, image, shards[0].path)
    names = class_names(features.get(label))
    for shard in shards[1:]:
        schema = read_schema(shard)
        for column, setting in ((image, "image_column"), (label, "label_column")):
            if schema.get_field_index(column) < 0:
                raise DatasetError(missing_column(
                    shard.path, column_said(column, setting, getattr(data, setting)), setting, schema))
            if schema.field(column).type != first.field(column).type:
                said = column_said(column, setting, getattr(data, setting))
                raise DatasetError(
                    f"{shard.path}: {said} holds {schema.field(column).type} where "
                    f"{shards[0].path} holds {first.field(column).type}; every shard of a "
                    "dataset needs the same columns"
                )
    raw = [read_labels(shard, label, names) for shard in shards]
    classes, labels = class_ids(raw, names, path)
    require_two_classes(classes, path, one="has rows of one class only", kinds="classes")
    split = split_rows(shards, labels, data, classes)
    paths, stored = image_references(shards, image, first)
    tables = tuple(shard.path for shard in shards)
    return DatasetIndex(tuple(classes), paths, labels, split, stored=stored, tables=tables)
