"""Which column holds the images and which the labels: given, declared by the Hugging Face
features, named as usual, or the only column of a fitting type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.data.index import DatasetError
from workers.data.roots import is_file
from workers.data.tables.shards import read_json

if TYPE_CHECKING:
    import pyarrow as pa

IMAGE_NAMES = ("image", "img")
LABEL_NAMES = ("label", "labels")


def declared_features(schema: pa.Schema, fallback: dict[str, Any]) -> dict[str, Any]:
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


def info_features(folder: Path) -> dict[str, Any]:
    """`save_to_disk` also keeps the features in dataset_info.json next to the arrow files."""
    info = folder / "dataset_info.json"
    if not is_file(info):
        return {}
    features = read_json(info).get("features")
    return features if isinstance(features, dict) else {}


def feature_type(feature: Any) -> str | None:
    return feature.get("_type") if isinstance(feature, dict) else None


def columns(schema: pa.Schema) -> str:
    """How many columns a file has: their names are the file's content, not said."""
    return f"it has {len(schema.names)} column{'s' if len(schema.names) != 1 else ''}"


def column_said(column: str, setting: str, given: str | None) -> str:
    """A column as a message names it: by name when the user gave it or it is one of the usual
    names; a name read from the file's metadata is not quoted."""
    if column in (*IMAGE_NAMES, *LABEL_NAMES) or column == given:
        return f"column {column!r}"
    return f"the column its metadata declares (dataset.{setting} unset)"


def missing_column(path: Path, said: str, setting: str, schema: pa.Schema) -> str:
    return f"{path} has no {said} ({setting}); {columns(schema)}; set dataset.{setting} to one"


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


def image_column(
    schema: pa.Schema, features: dict[str, Any], given: str | None, path: Path
) -> str:
    """The given column; else the Image feature; else `image`/`img`; else the single column of
    encoded bytes or {bytes, path} structs."""
    import pyarrow.types as types

    if given is not None:
        if schema.get_field_index(given) < 0:
            raise DatasetError(missing_column(path, f"column {given!r}", "image_column", schema))
        chosen = given
    else:
        declared = [n for n in schema.names if feature_type(features.get(n)) == "Image"]
        named = [n for n in IMAGE_NAMES if n in schema.names]
        binary = [
            n
            for n in schema.names
            if _is_image_type(schema.field(n).type)
            and not types.is_string(schema.field(n).type)
            and not types.is_large_string(schema.field(n).type)
        ]
        chosen = _the_one((declared, named, binary), path, schema, "images", "image_column")
    if not _is_image_type(schema.field(chosen).type):
        raise DatasetError(
            f"{path}: {column_said(chosen, 'image_column', given)} holds {schema.field(chosen).type}, not "
            "images (encoded bytes, a path, or a {bytes, path} struct); set "
            f"dataset.image_column to the one that does ({columns(schema)})"
        )
    return chosen


def _the_one(
    tiers: tuple[list[str], ...], path: Path, schema: pa.Schema, holds: str, setting: str
) -> str:
    """The single column of the first tier that names any, else the setting to give."""
    candidates = next((tier for tier in tiers if tier), [])
    if len(candidates) != 1:
        found = "several" if candidates else "no"
        raise DatasetError(
            f"{path}: {found} columns could hold the {holds} ({columns(schema)}); set "
            f"dataset.{setting} to the one that does"
        )
    return candidates[0]


def label_column(
    schema: pa.Schema, features: dict[str, Any], given: str | None, image: str, path: Path
) -> str:
    """The given column; else the ClassLabel feature; else `label`/`labels`; else the single
    integer or string column besides the image column."""
    if given is not None:
        if schema.get_field_index(given) < 0:
            raise DatasetError(missing_column(path, f"column {given!r}", "label_column", schema))
        chosen = given
    else:
        others = [n for n in schema.names if n != image]
        declared = [n for n in others if feature_type(features.get(n)) == "ClassLabel"]
        named = [n for n in LABEL_NAMES if n in others]
        typed = [n for n in others if _is_label_type(schema.field(n).type)]
        chosen = _the_one((declared, named, typed), path, schema, "labels", "label_column")
    if chosen == image or not _is_label_type(schema.field(chosen).type):
        raise DatasetError(
            f"{path}: {column_said(chosen, 'label_column', given)} holds {schema.field(chosen).type}, not "
            "labels (integers or strings); set dataset.label_column to the one that does "
            f"({columns(schema)})"
        )
    return chosen


def class_names(feature: Any) -> list[str] | None:
    if feature_type(feature) != "ClassLabel":
        return None
    names = feature.get("names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return names
    return None
