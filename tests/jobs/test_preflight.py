"""The checks a job's driver makes before it stores or starts anything, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.errors import JobError
from automl.jobs.preflight import check_dataset, check_paths
from automl.search.spec import parse_spec


def test_a_job_with_dataset_roots_reads_only_under_them(tmp_path: Path, color_folder: Path) -> None:
    """A runner of a service with roots judges every path the dataset's files name under them
    (a manifest under a root may list any file); the embedded run reads them all."""
    root = tmp_path / "root"
    root.mkdir()
    manifest = root / "m.csv"
    manifest.write_text("path,label\n" + "\n".join(
        f"{p},{p.parent.name}" for p in sorted(color_folder.rglob("*.png"))) + "\n")
    spec = parse_spec({"name": "t", "dataset": {"source": str(manifest)},
                       "space": {"backbone": "test_resnet", "img_size": 32}})
    with pytest.raises(JobError, match=r"^dataset: .*m.csv:2: the image that line names resolves "
                       "outside the dataset roots"):
        check_dataset(spec, (root,))
    assert check_dataset(spec).images == 24
    weights = parse_spec({"name": "t", "dataset": {"source": str(manifest)},
                          "space": {"pretrained": str(tmp_path / "nope.pth")}})
    with pytest.raises(JobError, match=r"space.pretrained=.* is outside the dataset roots"):
        check_paths(weights, (root,))
    with pytest.raises(JobError, match=r"space.pretrained: pretrained weights file .* does not exist"):
        check_paths(weights)


def test_a_refusal_under_the_roots_does_not_say_where_they_are(
    tmp_path: Path, color_folder: Path
) -> None:
    """The roots are the operator's setting, and a job's error is read back over HTTP by
    whoever sent it: it names the setting, not the folders."""
    root = tmp_path / "operator-only-root"
    for name in ("red", "blue"):  # class folders under the root, images linked from outside
        (root / "data" / name).mkdir(parents=True)
        for image in (color_folder / name).glob("*.png"):
            (root / "data" / name / image.name).symlink_to(image)
    spec = parse_spec({"name": "t", "dataset": {"source": str(root / "data")},
                       "space": {"pretrained": "/srv/elsewhere/w.pth"}})
    for check in (check_paths, check_dataset):
        with pytest.raises(JobError) as refused:
            check(spec, (root,))
        assert "outside the dataset roots (AUTOML_DATASET_ROOTS)" in str(refused.value)
        assert "operator-only-root" not in str(refused.value).replace(str(root / "data"), "")
