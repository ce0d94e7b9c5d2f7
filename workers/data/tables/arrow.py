"""Reading parquet files and Arrow IPC streams with pyarrow, a column in batches of rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.data.index import DatasetError

if TYPE_CHECKING:
    import pyarrow as pa

    from workers.data.tables.shards import Shard

READ_BUFFER = 1 << 20  # bytes per read of a parquet column chunk


def unreadable(path: Path, error: Exception) -> DatasetError:
    kind = "an Arrow stream" if path.suffix == ".arrow" else "a parquet file"
    return DatasetError(  # pyarrow's message may quote the bytes it choked on
        f"{path} is not a readable {kind} ({type(error).__name__}); download or save it again"
    )


def row_count(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                return sum(batch.num_rows for batch in ipc_reader(source))
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (pa.ArrowException, OSError) as error:
        raise unreadable(path, error) from error


def ipc_reader(source: Any) -> Any:
    """`save_to_disk` writes the IPC stream format; the random-access file format reads too."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        file = pa.ipc.open_file(source)
        return (file.get_batch(i) for i in range(file.num_record_batches))


def read_schema(shard: Shard) -> pa.Schema:
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
        raise unreadable(shard.path, error) from error


def batches(shard: Shard, column: str, rows: int) -> Iterator[pa.RecordBatch]:
    """One column in batches of rows: parquet reads page by page, arrow is memory-mapped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if shard.arrow:
            with pa.memory_map(str(shard.path)) as source:
                for batch in ipc_reader(source):
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
        raise unreadable(shard.path, error) from error


def cells(array: pa.Array) -> Iterator[tuple[bytes | None, str | None]]:
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
