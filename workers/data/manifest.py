"""A CSV manifest: `path,label` rows, paths relative to the manifest's folder."""

from __future__ import annotations

import csv
from pathlib import Path

from workers.data.index import DatasetError, require_two_classes
from workers.data.roots import confined


def read_manifest(manifest: Path) -> tuple[list[str], list[Path], list[int]]:
    # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark, which would
    # otherwise become part of the first column's name
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if reader.fieldnames is not None:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            # the file's own first line is not quoted back: error messages travel (a job's
            # error over HTTP) where the file's content must not
            columns = len(reader.fieldnames or [])
            raise DatasetError(
                f"{manifest} must start with a header row naming its 'path' and 'label' "
                f"columns; its first line has {columns} column(s), not both of those"
            )
        rows = [_manifest_row(manifest, reader.line_num, row) for row in reader]
    if not rows:
        raise DatasetError(f"{manifest} lists no images; add path,label rows")
    classes = sorted({label for _, _, label in rows})
    require_two_classes(classes, manifest)
    index = {name: i for i, name in enumerate(classes)}
    paths, labels = [], []
    for line, raw, label in rows:
        path = Path(raw) if Path(raw).is_absolute() else manifest.parent / raw
        confined(path, f"{manifest}:{line}: the image that line names")
        if not path.is_file():
            raise DatasetError(f"{manifest}:{line}: the image that line names does not exist")
        paths.append(path)
        labels.append(index[label])
    return classes, paths, labels


def _manifest_row(manifest: Path, line: int, row: dict[str, str | None]) -> tuple[int, str, str]:
    """(line, path, label), surrounding spaces dropped: ` cat` and `cat` are one class."""
    raw, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    if not raw or not label:
        missing = "path" if not raw else "label"
        raise DatasetError(
            f"{manifest}:{line}: the row has no {missing}; every row needs path,label"
        )
    return line, raw, label
