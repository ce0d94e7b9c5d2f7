"""A table's labels: read per shard, mapped to class ids, and the rows split by shard names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.config import DataConfig
from workers.data.index import SPLITS, DatasetError
from workers.data.split import stratified_split
from workers.data.tables.arrow import ipc_reader, unreadable
from workers.data.tables.shards import Shard


def read_labels(shard: Shard, column: str, names: list[str] | None) -> np.ndarray:
    """One shard's labels: int64 ids when the column holds integers, else an object array of str."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as types

    try:
        if shard.arrow:
            with pa.memory_map(str(shard.path)) as source:
                chunks = [batch.column(batch.schema.get_field_index(column))
                          for batch in ipc_reader(source)]
            values = pa.chunked_array(chunks).combine_chunks() if chunks else pa.array([])
        else:
            values = pq.ParquetFile(shard.path).read(columns=[column]).column(0).combine_chunks()
    except (pa.ArrowException, OSError) as error:
        raise unreadable(shard.path, error) from error
    if values.null_count:
        row = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
        raise DatasetError(f"{shard.path} row {row}: the row has no label; every row needs one")
    if types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if types.is_integer(values.type):
        ids = values.to_numpy(zero_copy_only=False).astype(np.int64)
        if names is not None:
            bad = np.flatnonzero((ids < 0) | (ids >= len(names)))
            if len(bad):
                raise DatasetError(
                    f"{shard.path} row {int(bad[0])}: its label is not one of the ClassLabel's "
                    f"{len(names)} classes (Hugging Face marks unlabeled rows -1); remove "
                    "unlabeled rows, or their shard"
                )
        return ids
    strings = np.asarray(values.to_pylist(), dtype=object)
    empty = np.flatnonzero(strings == "")
    if len(empty):
        raise DatasetError(f"{shard.path} row {int(empty[0])}: the row's label is empty")
    return strings


def class_ids(
    raw: list[np.ndarray], names: list[str] | None, where: Path
) -> tuple[list[str], np.ndarray]:
    joined = np.concatenate(raw)
    if names is not None and joined.dtype == np.int64:
        counts = np.bincount(joined, minlength=len(names))
        missing = [names[i] for i in np.flatnonzero(counts == 0)]
        if missing:
            ids = ", ".join(str(i) for i in np.flatnonzero(counts == 0)[:5])
            raise DatasetError(
                f"{where}: {len(missing)} of the ClassLabel's {len(names)} classes have no rows "
                f"(ids {ids}{' ...' if len(missing) > 5 else ''}); give every shard of the "
                "dataset"
            )
        return list(names), joined
    if joined.dtype == np.int64:
        distinct = np.unique(joined)
        return [str(v) for v in distinct], np.searchsorted(distinct, joined).astype(np.int64)
    distinct_names = sorted(set(joined.tolist()))
    lookup = {name: i for i, name in enumerate(distinct_names)}
    return distinct_names, np.fromiter((lookup[v] for v in joined), np.int64, len(joined))


def split_rows(
    shards: list[Shard], labels: np.ndarray, data: DataConfig, classes: list[str]
) -> dict[str, np.ndarray]:
    """Shards named by split keep it; without a val shard, val (and test, without a test shard)
    is carved from train by the seeded stratified split; no split names: all rows are one pool."""
    if all(shard.split is None for shard in shards):
        return stratified_split(labels, data.val_fraction, data.test_fraction, data.split_seed,
                                classes)
    owner = np.concatenate([np.full(s.rows, SPLITS.index(s.split or "train")) for s in shards])
    given = {split: np.flatnonzero(owner == i) for i, split in enumerate(SPLITS)}
    if not len(given["train"]):
        raise DatasetError(
            f"{shards[0].path.parent} has no train shard; name the training files "
            "train-00000-of-0000N.parquet or put them in a train/ folder"
        )
    if len(given["val"]):
        return given
    train = given["train"]
    test = data.test_fraction if not len(given["test"]) else 0.0
    carved = stratified_split(labels[train], data.val_fraction, test, data.split_seed, classes)
    out = {split: train[carved[split]] for split in SPLITS}
    if len(given["test"]):
        out["test"] = given["test"]
    return out
