"""What is checked before a job stores or starts anything: its dataset, the weights it would
download, and whether any Ray node can host one trial. A job refused here leaves no trace."""

from __future__ import annotations

from pathlib import Path

import ray

from automl.errors import JobError
from automl.search.spec import JobSpec
from workers.config import DataConfig
from workers.datasets import DatasetError, load_index, verify_images
from workers.model import hub_unreachable, uncached_hub_weights


def check_dataset(spec: JobSpec, roots: tuple[Path, ...] = ()) -> int:
    """Index and verify the dataset once, on the driver, before anything is stored or started;
    returns its number of images. With `roots` (a service's dataset roots), every image must
    lie under one of them once symlinks are resolved: a folder under a root may still link
    anywhere."""
    try:
        index = load_index(DataConfig(
            source=spec.dataset.source,
            val_fraction=spec.dataset.val_fraction,
            test_fraction=spec.dataset.test_fraction,
            split_seed=spec.dataset.split_seed,
        ))
        if roots:
            outside = sum(1 for p in index.paths
                          if not any(p.resolve().is_relative_to(root) for root in roots))
            if outside:
                raise DatasetError(
                    f"{outside} of its images resolve outside the dataset roots "
                    f"({':'.join(map(str, roots))}) through symlinks; this service reads only "
                    "under them"
                )
        verify_images(index.paths)
    except DatasetError as error:
        raise JobError(f"dataset: {error}") from error
    return len(index.paths)


def check_pretrained_weights(spec: JobSpec) -> None:
    """Refuse a job whose trials would all fail to fetch their pretrained weights.

    Checked on the driver, which shares the workers' network in the deployments this project
    ships; a worker-only outage is still caught by the trials (fail fast, `failure_hint`).
    """
    space = spec.search_space()
    if True not in space.pretrained():
        return
    missing = uncached_hub_weights(space.backbones())
    if not missing:
        return
    why = hub_unreachable()
    if why is None:
        return
    from huggingface_hub import constants

    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise JobError(
        f"pretrained weights cannot be fetched: {why}, and {len(missing)} of the space's "
        f"backbones ({', '.join(missing[:3])}{more}) are not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE}; give the machines network access or a filled cache "
        "(HF_HOME), or set space.pretrained: false or to a weights file"
    )


def check_resources(spec: JobSpec) -> None:
    """Refuse a trial size no node can ever host, instead of waiting forever for it."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need = spec.resources
    if not any(n.get("CPU", 0) >= need.cpu and n.get("GPU", 0) >= need.gpu for n in nodes):
        biggest_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        biggest_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        raise JobError(
            f"each trial asks for {need.cpu:g} CPU and {need.gpu:g} GPU, but the largest Ray node "
            f"has {biggest_cpu:g} CPU and {biggest_gpu:g} GPU; lower `resources` in the job spec "
            "or point --ray-address at a cluster that has them"
        )
