"""Each row's image: encoded bytes kept in the table (read in batches when needed), or the file
a row names, resolved like a CSV manifest's paths."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workers.data.index import DatasetError
from workers.data.roots import confined
from workers.data.tables.arrow import batches, cells, ipc_reader
from workers.data.tables.shards import Shard

if TYPE_CHECKING:
    import pyarrow as pa


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
            for batch in batches(shard, self.column, rows_per_read):
                yield [
                    _encoded(shard, row + j, cell)
                    for j, cell in enumerate(cells(batch.column(0)))
                ]
                row += batch.num_rows


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


def image_references(
    shards: list[Shard], column: str, schema: pa.Schema
) -> tuple[tuple[Path, ...], StoredImages | None]:
    """Images held as bytes stay in the tables; a column of paths becomes files like a CSV's."""
    if not _paths_only(shards, column, schema):
        return (), StoredImages(tuple(shards), column)
    paths: list[Path] = []
    for shard in shards:
        row = 0
        for batch in batches(shard, column, 65536):
            for _, raw in cells(batch.column(0)):
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
                for batch in ipc_reader(source):
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
