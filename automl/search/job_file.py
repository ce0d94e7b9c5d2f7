"""A job file: YAML read within bounds, its relative paths read from its own folder, validated,
and its weights files checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from automl.errors import SpecError
from automl.search.bounded_yaml import load_yaml, yaml_problem
from automl.search.paths import check_weights
from automl.search.spec import JobSpec, parse_spec


def load_spec(path: Path) -> JobSpec:
    if path.is_dir():
        raise SpecError(f"{path} is a directory; pass the job file (YAML) itself")
    if not path.is_file():
        raise SpecError(f"job file {path} does not exist")
    try:
        payload = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (job files are YAML in UTF-8)") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: {yaml_problem(error)}") from None
    spec = parse_spec(with_paths_from(payload, path.parent), str(path))
    try:
        check_weights(spec)
    except SpecError as error:
        raise SpecError(f"{path} is invalid:\n  {error}") from None
    return spec


def with_paths_from(payload: Any, folder: Path) -> Any:
    """Relative paths (the dataset, a weights file) are read from the job file's folder, as
    docker-compose reads its paths, and stored absolute: trials run in other directories, on
    other machines. Done to the payload, before it is validated; the weights file is opened
    once the spec is valid, from wherever the command runs."""

    def absolute(value: Any, builtin_ok: bool = False) -> Any:
        if not isinstance(value, str) or (builtin_ok and value.startswith("builtin:")):
            return value
        return value if Path(value).expanduser().is_absolute() else str((folder / value).resolve())

    if not isinstance(payload, dict):
        return payload
    payload = dict(payload)
    if isinstance(payload.get("dataset"), dict) and "source" in payload["dataset"]:
        dataset = payload["dataset"] = dict(payload["dataset"])
        dataset["source"] = absolute(dataset["source"], builtin_ok=True)
    space = payload.get("space")
    if isinstance(space, dict) and "pretrained" in space:
        weights = space["pretrained"]
        payload["space"] = {**space, "pretrained": [absolute(v) for v in weights]
                            if isinstance(weights, list) else absolute(weights)}
    return payload
