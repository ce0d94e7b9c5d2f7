"""Datasets as people download them: parquet files and folders saved by `datasets.save_to_disk`.

The Hugging Face image-dataset format: one row per image, an image column (the encoded file's
bytes, a path to it, or the Hub's `{"bytes", "path"}` struct) and a label column; the Hub writes
the class names into the schema metadata (`b"huggingface"`, a ClassLabel feature). A
`save_to_disk` folder holds the same table as Arrow IPC stream files with `state.json` and
`dataset_info.json`, so pyarrow alone reads both.

Indexing reads the label column and the files' row counts only; image bytes are read in batches
of rows, when verifying on the driver and when decoding into the cache, never a whole file at
once. pyarrow is imported inside the functions that need it: every other source runs on a
machine without it (DESIGN.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.config import DataConfig
from workers.datasets import SPLITS, DatasetError, DatasetIndex, confined, stratified_split

if TYPE_CHECKING:
    import pyarrow as pa

TABLE_SUFFIXES = (".parquet", ".arrow")
SPLIT_FOLDERS = ("train", "val", "valid", "validation", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_PREFIX = re.compile(r"^(train|validation|valid|val|test)(?:$|[-_.])")
IMAGE_NAMES = ("image", "img")
READ_BUFFER = 1 << 20  # bytes per read of a parquet column chunk
LABEL_NAMES = ("label", "labels")


@dataclass(frozen=True)
class Shard:
    """One table file: parquet, or an Arrow IPC stream as `save_to_disk` writes them."""

    path: Path
    rows: int
    split: str | None  # train / val / test when its name or folder says so

    @property
    def arrow(self) -> bool:
        return self.path.suffix == ".arrow"


@dataclass(frozen=True)
class EncodedImage:
    """One row's image as stored: the encoded file's bytes."""

    data: bytes
    where: str  # "file row n" (0-based, as pyarrow and pandas count), for error messages


@dataclass(frozen=True)
class StoredImages:
    """Images held inside table files, in row order across the shards."""

    shards: tuple[Shard, ...]
    column: str

    def __len__(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def files(self) -> tuple[Path, ...]:
        return tuple(shard.path for shard in self.shards)

    def encoded(self, rows_per_read: int) -> Iterator[list[EncodedImage]]:
        """The images in batches of at most `rows_per_read` rows, read as they are needed."""
        for shard in self.shards:
            row = 0
            for batch in _batches(shard, self.column, rows_per_read):
                yield [
                    _encoded(shard, row + j, cell)
                    for j, cell in enumerate(_cells(batch.column(0)))
                ]
                row += batch.num_rows


def is_table_source(path: Path) -> bool:
    """A parquet/arrow file, a `save_to_disk` folder, or a folder of parquet shards (directly,
    in split folders, or in `data/` as a Hub repository lays them out)."""
    if path.is_file():
        return path.suffix.lower() in TABLE_SUFFIXES
    if _is_file(path / "state.json") or _is_file(path / "dataset_dict.json"):
        return True
    return any(next(folder.glob("*.parquet"), None) for folder in _shard_folders(path))


def _is_file(path: Path) -> bool:
    return confined(path, str(path)).is_file()


def _is_dir(path: Path) -> bool:
    return confined(path, str(path)).is_dir()


def load_table_index(path: Path, data: DataConfig) -> DatasetIndex:
    """Index a table dataset: its labels, classes and splits, without reading any image bytes."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DatasetError(
            f"{path} is a parquet/arrow dataset and reading one needs pyarrow; install it "
            "(pip install pyarrow) on every machine that runs trials"
        ) from None
    shards = _find_shards(path)
    first = _schema(shards[0])
    features = _features(first, _info_features(shards[0].path.parent))
    image = _image_column(first, features, data.image_column, shards[0].path)
    label = _label_column(first, features, data.label_column, image, shards[0].path)
    names = _class_names(features.get(label))
    for shard in shards[1:]:
        schema = _schema(shard)
        for column, setting in ((image, "image_column"), (label, "label_column")):
            if schema.get_field_index(column) < 0:
                raise DatasetError(_missing_column(
                    shard.path, _said(column, setting, getattr(data, setting)), setting, schema))
            if schema.field(column).type != first.field(column).type:
                said = _said(column, setting, getattr(data, setting))
                raise DatasetError(
                    f"{shard.path}: {said} holds {schema.field(column).type} where "
                    f"{shards[0].path} holds {first.field(column).type}; every shard of a "
                    "dataset needs the same columns"
                )
    raw = [_read_labels(shard, label, names) for shard in shards]
    classes, labels = _class_ids(raw, names, path)
    if len(classes) < 2:
        raise DatasetError(
            f"{path} has rows of one class only; a classifier needs at least two classes"
            if classes
            else f"{path} has no classes"
        )
    split = _split(shards, labels, data, classes)
    paths, stored = _image_references(shards, image, first)
    tables = tuple(shard.path for shard in shards)
    return DatasetIndex(tuple(classes), paths, labels, split, stored=stored, tables=tables)


def _shard_folders(path: Path) -> list[Path]:
    return [path, *(path / name for name in (*SPLIT_FOLDERS, "data") if _is_dir(path / name))]


def _find_shards(path: Path) -> list[Shard]:
    if path.is_file():
        return [_shard(path, None)]
    if _is_file(path / "dataset_dict.json"):
        return _dataset_dict_shards(path)
    if _is_file(path / "state.json"):
        return _saved_dataset_shards(path, None)
    shards = []
    for folder in _shard_folders(path):
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
    splits = _read_json(path / "dataset_dict.json").get("splits") or []
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
    files = _read_json(folder / "state.json").get("_data_files") or []
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


def _read_json(path: Path) -> dict[str, Any]:
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
    rows = _row_count(path)
    if rows == 0:
        raise DatasetError(f"{where} has no rows; download it again or remove it")
    return Shard(path, rows, split)


def _unreadable(path: Path, error: Exception) -> DatasetError:
    kind = "an Arrow stream" if path.suffix == ".arrow" else "a parquet file"
    return DatasetError(  # pyarrow's message may quote the bytes it choked on
        f"{path} is not a readable {kind} ({type(error).__name__}); download or save it again"
    )


def _row_count(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                return sum(batch.num_rows for batch in _ipc_reader(source))
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from error


def _ipc_reader(source: Any) -> Any:
    """`save_to_disk` writes the IPC stream format; the random-access file format reads too."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        file = pa.ipc.open_file(source)
        return (file.get_batch(i) for i in range(file.num_record_batches))


def _schema(shard: Shard) -> pa.Schema:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if shard.arrow:
            with pa.memory_map(str(shard.path)) as source:
                try:
                    return pa.ipc.open_stream(source).schema
                except pa.ArrowInvalid:
                    source.seek(0)
                    return pa.ipc.open_file(source).schema
        return pq.read_schema(shard.path)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(shard.path, error) from error


def _batches(shard: Shard, column: str, rows: int) -> Iterator[pa.RecordBatch]:
    """One column in batches of rows: parquet reads page by page, arrow is memory-mapped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if shard.arrow:
            with pa.memory_map(str(shard.path)) as source:
                for batch in _ipc_reader(source):
                    picked = batch.select([column])
                    for start in range(0, picked.num_rows, rows):
                        yield picked.slice(start, rows)
            return
        # pyarrow pre-buffers a whole row group by default: 980 MB of memory to stream the
        # images of a 732 MB file written as one row group; a read buffer instead keeps it
        # at about 250 MB whatever the file's size
        reader = pq.ParquetFile(shard.path, pre_buffer=False, buffer_size=READ_BUFFER)
        yield from reader.iter_batches(batch_size=rows, columns=[column])
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(shard.path, error) from error


def _cells(array: pa.Array) -> Iterator[tuple[bytes | None, str | None]]:
    """(bytes, path) per row, whichever kind of image column this is."""
    import pyarrow.types as types

    if types.is_struct(array.type):
        names = {array.type.field(i).name for i in range(array.type.num_fields)}
        data = array.field("bytes").to_pylist() if "bytes" in names else [None] * len(array)
        paths = array.field("path").to_pylist() if "path" in names else [None] * len(array)
        # a null struct is a row without an image, whatever its children hold
        valid = array.is_valid().to_pylist()
        for ok, blob, path in zip(valid, data, paths, strict=True):
            yield (blob, path) if ok else (None, None)
    elif types.is_string(array.type) or types.is_large_string(array.type):
        for path in array.to_pylist():
            yield None, path
    else:
        for blob in array.to_pylist():
            yield blob, None


def _encoded(shard: Shard, row: int, cell: tuple[bytes | None, str | None]) -> EncodedImage:
    """A row's bytes. A row holding only a path among rows holding bytes is refused rather than
    followed: every file a dataset reads is then listed by `DatasetIndex.files`, which a service
    checks against its dataset roots."""
    where = f"{shard.path} row {row}"
    blob, path = cell
    if blob:
        return EncodedImage(blob, where)
    if path:
        raise DatasetError(
            f"{where}: the row's image has a path but no bytes, while other rows hold bytes; "
            "embed its bytes (datasets' embed_external_files) or give every row a path"
        )
    raise DatasetError(f"{where}: the row has no image (no bytes, no path); remove the row")


def _resolve(shard: Shard, raw: str) -> Path:
    path = Path(raw)
    return path if path.is_absolute() else shard.path.parent / path


def _features(schema: pa.Schema, fallback: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face features (name -> {"_type": ...}) the file's metadata declares."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw:
        try:
            meta = json.loads(raw)
            features = (meta.get("info") or {}).get("features") or meta.get("features")
        except (ValueError, AttributeError):
            features = None  # metadata someone else wrote: the columns speak for themselves
        if isinstance(features, dict):
            return features
    return fallback


def _info_features(folder: Path) -> dict[str, Any]:
    """`save_to_disk` also keeps the features in dataset_info.json next to the arrow files."""
    info = folder / "dataset_info.json"
    if not _is_file(info):
        return {}
    features = _read_json(info).get("features")
    return features if isinstance(features, dict) else {}


def _feature_type(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


def _columns(schema: pa.Schema) -> str:
    """How many columns a file has: their names are the file's content, not said."""
    return f"it has {len(schema.names)} column{'s' if len(schema.names) != 1 else ''}"


def _said(column: str, setting: str, given: str | None) -> str:
    """A column as a message names it: by name when the user gave it or it is one of the usual
    names; a name read from the file's metadata is not quoted."""
    if column in (*IMAGE_NAMES, *LABEL_NAMES) or column == given:
        return f"column {column!r}"
    return f"the column its metadata declares (dataset.{setting} unset)"


def _missing_column(path: Path, said: str, setting: str, schema: pa.Schema) -> str:
    return f"{path} has no {said} ({setting}); {_columns(schema)}; set dataset.{setting} to one"


def _is_image_type(kind: pa.DataType) -> bool:
    import pyarrow.types as types

    if types.is_struct(kind):
        names = {kind.field(i).name for i in range(kind.num_fields)}
        return bool(names & {"bytes", "path"})
    return any(
        check(kind)
        for check in (types.is_binary, types.is_large_binary, types.is_string, types.is_large_string)
    )


def _is_label_type(kind: pa.DataType) -> bool:
    import pyarrow.types as types

    if types.is_dictionary(kind):
        kind = kind.value_type
    return types.is_integer(kind) or types.is_string(kind) or types.is_large_string(kind)


def _image_column(
    schema: pa.Schema, features: dict[str, Any], given: str | None, path: Path
) -> str:
    """The given column; else the Image feature; else `image`/`img`; else the single column of
    encoded bytes or {bytes, path} structs."""
    import pyarrow.types as types

    if given is not None:
        if schema.get_field_index(given) < 0:
            raise DatasetError(_missing_column(path, f"column {given!r}", "image_column", schema))
        chosen = given
    else:
        declared = [n for n in schema.names if _feature_type(features.get(n)) == "Image"]
        named = [n for n in IMAGE_NAMES if n in schema.names]
        binary = [
            n
            for n in schema.names
            if _is_image_type(schema.field(n).type)
            and not types.is_string(schema.field(n).type)
            and not types.is_large_string(schema.field(n).type)
        ]
        candidates = next((c for c in (declared, named, binary) if c), [])
        if len(candidates) != 1:
            found = "several" if candidates else "no"
            raise DatasetError(
                f"{path}: {found} columns could hold the images ({_columns(schema)}); set "
                "dataset.image_column to the one that does"
            )
        chosen = candidates[0]
    if not _is_image_type(schema.field(chosen).type):
        raise DatasetError(
            f"{path}: {_said(chosen, 'image_column', given)} holds {schema.field(chosen).type}, not "
            "images (encoded bytes, a path, or a {bytes, path} struct); set "
            f"dataset.image_column to the one that does ({_columns(schema)})"
        )
    return chosen


def _label_column(
    schema: pa.Schema, features: dict[str, Any], given: str | None, image: str, path: Path
) -> str:
    """The given column; else the ClassLabel feature; else `label`/`labels`; else the single
    integer or string column besides the image column."""
    if given is not None:
        if schema.get_field_index(given) < 0:
            raise DatasetError(_missing_column(path, f"column {given!r}", "label_column", schema))
        chosen = given
    else:
        others = [n for n in schema.names if n != image]
        declared = [n for n in others if _feature_type(features.get(n)) == "ClassLabel"]
        named = [n for n in LABEL_NAMES if n in others]
        typed = [n for n in others if _is_label_type(schema.field(n).type)]
        candidates = next((c for c in (declared, named, typed) if c), [])
        if len(candidates) != 1:
            found = "several" if candidates else "no"
            raise DatasetError(
                f"{path}: {found} columns could hold the labels ({_columns(schema)}); set "
                "dataset.label_column to the one that does"
            )
        chosen = candidates[0]
    if chosen == image or not _is_label_type(schema.field(chosen).type):
        raise DatasetError(
            f"{path}: {_said(chosen, 'label_column', given)} holds {schema.field(chosen).type}, not "
            "labels (integers or strings); set dataset.label_column to the one that does "
            f"({_columns(schema)})"
        )
    return chosen


def _class_names(feature: Any) -> list[str] | None:
    if _feature_type(feature) != "ClassLabel":
        return None
    names = feature.get("names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None


def _read_labels(shard: Shard, column: str, names: list[str] | None) -> np.ndarray:
    """One shard's labels: int64 ids when the column holds integers, else an object array of str."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as types

    try:
        if shard.arrow:
            with pa.memory_map(str(shard.path)) as source:
                chunks = [batch.column(batch.schema.get_field_index(column))
                          for batch in _ipc_reader(source)]
            values = pa.chunked_array(chunks).combine_chunks() if chunks else pa.array([])
        else:
            values = pq.ParquetFile(shard.path).read(columns=[column]).column(0).combine_chunks()
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(shard.path, error) from error
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


def _class_ids(
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


def _split(
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


def _image_references(
    shards: list[Shard], column: str, schema: pa.Schema
) -> tuple[tuple[Path, ...], StoredImages | None]:
    """Images held as bytes stay in the tables; a column of paths becomes files like a CSV's."""
    if not _paths_only(shards, column, schema):
        return (), StoredImages(tuple(shards), column)
    paths: list[Path] = []
    for shard in shards:
        row = 0
        for batch in _batches(shard, column, 65536):
            for _, raw in _cells(batch.column(0)):
                if not raw:
                    raise DatasetError(f"{shard.path} row {row}: the row has no image path")
                path = confined(_resolve(shard, raw),
                                f"{shard.path} row {row}: the image file that row names")
                if not path.is_file():
                    raise DatasetError(
                        f"{shard.path} row {row}: the image file that row names does not exist"
                    )
                paths.append(path)
                row += 1
    return tuple(paths), None


def _paths_only(shards: list[Shard], column: str, schema: pa.Schema) -> bool:
    """A string column, or a {bytes, path} struct whose bytes are null in every row (parquet's
    column statistics say so without reading them; arrow files are memory-mapped)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pyarrow.types as types

    kind = schema.field(column).type
    if types.is_string(kind) or types.is_large_string(kind):
        return True
    if not types.is_struct(kind) or kind.get_field_index("path") < 0:
        return False
    if kind.get_field_index("bytes") < 0:
        return True
    for shard in shards:
        if shard.arrow:
            with pa.memory_map(str(shard.path)) as source:
                for batch in _ipc_reader(source):
                    blobs = batch.column(batch.schema.get_field_index(column)).field("bytes")
                    if blobs.null_count < len(blobs):
                        return False
            continue
        meta = pq.ParquetFile(shard.path).metadata
        leaf = f"{column}.bytes"
        for group in range(meta.num_row_groups):
            chunk = next(
                (meta.row_group(group).column(i) for i in range(meta.num_columns)
                 if meta.row_group(group).column(i).path_in_schema == leaf),
                None,
            )
            stats = chunk.statistics if chunk is not None else None
            if stats is None or not stats.has_null_count or (
                stats.null_count < meta.row_group(group).num_rows
            ):
                return False
    return True
