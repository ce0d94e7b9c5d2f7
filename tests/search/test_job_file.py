"""A job file: read, its paths resolved from its folder, validated, its weights loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automl.errors import SpecError
from automl.search.job_file import load_spec
from automl.search.spec import parse_spec
from tests.support import MINIMAL_JOB

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("name: t\ndataset:\n  source: [builtin:digits\n")
    with pytest.raises(SpecError, match=r"invalid YAML at line \d+, column \d+"):
        load_spec(bad)


def test_examples_are_valid() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name


def test_a_job_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(SpecError, match="not a text file"):
        load_spec(binary)
    with pytest.raises(SpecError, match="is a directory; pass the job file"):
        load_spec(tmp_path)


def test_a_relative_dataset_path_is_read_from_the_job_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "job.yaml"
    job.write_text(yaml.safe_dump({**MINIMAL_JOB, "dataset": {"source": "../data/flowers"}}))
    monkeypatch.chdir("/")  # wherever the user runs it from, and wherever trials run
    assert load_spec(job).dataset.source == str(tmp_path / "data" / "flowers")


def test_validation_reads_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only a job file's loading opens the weights it names: over HTTP, what validation found
    on the disk would answer for files outside the dataset roots."""
    from workers.model import weights

    def opened(path: str) -> None:
        raise AssertionError(f"validation opened {path}")

    monkeypatch.setattr(weights, "check_weights_file", opened)
    spec = parse_spec({**MINIMAL_JOB, "space": {"pretrained": ["/etc/shadow", str(tmp_path / "w.pth")]}})
    assert spec.search_space().pretrained() == ("/etc/shadow", str(tmp_path / "w.pth"))
    monkeypatch.undo()
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**MINIMAL_JOB, "space": {"pretrained": "w.pth"}}))
    with pytest.raises(SpecError, match=r"job.yaml is invalid:\n  space.pretrained: pretrained "
                       "weights file .*w.pth does not exist"):
        load_spec(job)
