"""The checks a job's driver makes before it stores or starts anything, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.errors import JobError
from automl.jobs.preflight import check_dataset, check_paths, placement_problem
from automl.search.spec import ResourcesSpec, parse_spec


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


GPU_NODES = [{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}]


def test_a_group_the_cluster_cannot_hold_at_once_is_refused_naming_both() -> None:
    """A data-parallel trial reserves its whole group at once (one placement group): 8 GPUs
    over two 4-GPU nodes fit, 9 never will, nor a worker wider than any node."""
    assert placement_problem(ResourcesSpec(workers=8, gpu=1, cpu=3), GPU_NODES) is None
    # every CPU of both nodes to the workers leaves none for the trial's own process
    assert placement_problem(ResourcesSpec(workers=8, gpu=1, cpu=4), GPU_NODES) is not None
    assert placement_problem(ResourcesSpec(workers=2, cpu=0.5), [{"CPU": 2}]) is None
    said = placement_problem(ResourcesSpec(workers=9, gpu=1, cpu=1), GPU_NODES)
    assert said == (
        "each trial is a group of 9 workers of 1 CPU and 1 GPU (9 CPU and 9 GPU at once), but "
        "the cluster's 2 node(s), 32 CPU and 8 GPU in all, hold only 8 such workers beside the "
        "trial's own process (0.01 CPU); lower resources.workers, resources.cpu or "
        "resources.gpu, or point --ray-address at a cluster that has them")
    # CPUs bind too: a 16-CPU node holds two 6-CPU workers, so 4 need two such nodes
    assert placement_problem(ResourcesSpec(workers=4, cpu=6), [{"CPU": 16}]) is not None
    assert placement_problem(ResourcesSpec(workers=4, cpu=6), GPU_NODES) is None
    wide = placement_problem(ResourcesSpec(workers=2, gpu=8), GPU_NODES)
    assert wide is not None and wide.startswith(
        "each worker asks for 1 CPU and 8 GPU, but the largest Ray node has 16 CPU and 4 GPU")
    assert "\n" not in said
    # two whole-CPU workers on two 1-CPU nodes leave no room for the trial's own process
    assert placement_problem(ResourcesSpec(workers=2, cpu=1), [{"CPU": 1}, {"CPU": 1}])
    assert placement_problem(ResourcesSpec(workers=2, cpu=0.9), [{"CPU": 1}, {"CPU": 1}]) is None


def test_a_group_takes_whole_gpus_per_worker() -> None:
    with pytest.raises(ValueError, match="takes whole GPUs per worker"):
        ResourcesSpec(workers=2, gpu=0.5)
    assert ResourcesSpec(gpu=0.5).workers == 1
