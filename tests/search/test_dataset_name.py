"""How a published model names its dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.errors import SpecError
from automl.search.dataset_name import dataset_name
from automl.search.spec import parse_spec
from tests.support import MINIMAL_JOB


def test_a_published_model_names_its_dataset_without_the_servers_path(tmp_path: Path) -> None:
    """A model card goes to the Hugging Face Hub as it is: `dataset.name`, else the source's
    last folder (a manifest's or a parquet file's folder)."""
    folder = tmp_path / "srv" / "flowers"
    folder.mkdir(parents=True)
    (folder / "labels.csv").write_text("path,label\n")
    named = parse_spec({**MINIMAL_JOB, "dataset": {"source": str(folder), "name": "Oxford flowers"}})
    assert dataset_name(named.dataset.source, named.dataset.name) == "Oxford flowers"
    assert dataset_name(str(folder)) == "flowers"
    assert dataset_name(str(folder / "labels.csv")) == "flowers"
    assert dataset_name("builtin:digits") == "digits"
    with pytest.raises(SpecError, match=r"dataset\.name"):
        parse_spec({**MINIMAL_JOB, "dataset": {"source": str(folder), "name": ""}})
