"""What is checked before a job stores or starts anything: its dataset, the weights it would
download, and whether any Ray node can host one trial. A job refused here leaves no trace."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import ray

from automl.errors import JobError, SpecError
from automl.jobs.admission import require_under_roots
from automl.search.paths import check_weights
from automl.search.spec import JobSpec, ResourcesSpec
from workers.config import DataConfig
from workers.data.cache_budget import check_cache_budget
from workers.data.decoded_cache import decoded_path, verify_once
from workers.data.index import DatasetError, DatasetIndex
from workers.data.roots import is_under
from workers.data.sources import load_index
from workers.model.costs import measure_costs, static_costs
from workers.model.preprocessing import preprocessing, stored_size
from workers.model.target import broken_limits
from workers.model.weights import hub_unreachable, uncached_hub_weights
from workers.tune_adapter import TRIAL_SHARE


class DatasetSize(NamedTuple):
    images: int
    classes: int
    indexed: DatasetIndex  # computed once per job: its trials are handed it (tune.with_parameters)


def check_paths(spec: JobSpec, roots: tuple[Path, ...] = ()) -> None:
    """Every path the spec names, on the driver, before anything reads it: under `roots` (a
    service's dataset roots) when there are any, and each weights file a state dict."""
    try:
        if roots:
            require_under_roots(spec, roots)
        else:
            check_weights(spec)
    except SpecError as error:
        raise JobError(str(error)) from None


def check_dataset(spec: JobSpec, roots: tuple[Path, ...] = ()) -> DatasetSize:
    """Index and verify the dataset once, on the driver, before anything is stored or started;
    returns its numbers of images and classes, and the index. With `roots` (a service's dataset roots), every
    path the dataset's files name, and every folder indexing enters, is judged under them
    before it is looked at (`workers.data.roots.confined`), and every image file must lie under
    them once symlinks are resolved: a folder under a root may still link anywhere."""
    try:
        index = load_index(DataConfig(
            source=spec.dataset.source,
            val_fraction=spec.dataset.val_fraction,
            test_fraction=spec.dataset.test_fraction,
            split_seed=spec.dataset.split_seed,
            image_column=spec.dataset.image_column,
            label_column=spec.dataset.label_column,
        ), roots)
        if roots and not spec.dataset.source.startswith("builtin:") and not all(
                is_under(p, roots) for p in index.files):
            raise DatasetError(
                "some of its images resolve outside the dataset roots (AUTOML_DATASET_ROOTS) "
                "through symlinks; this service reads only under them"
            )
        check_cache_room(spec, index)
        # skipped for files verified or decoded on this machine
        verify_once(index.images, fingerprint=index.fingerprint)
    except DatasetError as error:
        raise JobError(f"dataset: {error}") from error
    return DatasetSize(len(index), len(index.classes), index)


def check_cache_room(spec: JobSpec, index: DatasetIndex) -> None:
    """The decoded copies the job's trials may write (one per stored side and resampling the
    space allows, that this machine has not cached yet) must fit the cache's budget together:
    a dataset too big for it is refused now, with the numbers, not by every trial."""
    space = spec.search_space()
    needed: dict[tuple[int, str], int] = {}
    for backbone in space.backbones():
        for size in space.img_sizes():
            prep = preprocessing(backbone, size)
            side = stored_size(prep.img_size, prep.crop_pct)
            target = decoded_path(index.images, side, prep.interpolation,
                                  fingerprint=index.fingerprint)
            if not target.exists():
                needed[(side, prep.interpolation)] = side
    if needed:
        check_cache_budget(len(index), sorted(needed.values()))


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
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise JobError(  # the cache named by its setting: its path is the server's
        f"pretrained weights cannot be fetched: {why}, and {len(missing)} of the space's "
        f"backbones ({', '.join(missing[:3])}{more}) are not in the machines' Hugging Face "
        "cache (HF_HOME); give the machines network access or a filled cache, or set "
        "space.pretrained: false or to a weights file"
    )


def check_resources(spec: JobSpec) -> None:
    """Refuse a trial size no node can ever host, or a data-parallel group the whole cluster
    cannot hold at once, instead of waiting forever for it."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = placement_problem(spec.resources, nodes)
    if problem:
        raise JobError(problem)


def placement_problem(need: ResourcesSpec, nodes: list[dict[str, float]]) -> str | None:
    """Why one trial of `need` cannot be placed on these nodes (Ray's resource dicts), or None.

    A group needs a node for each worker (a worker's resources are one bundle of its placement
    group, which Ray never splits over nodes) and all of them at once: the workers each node
    can hold, summed, must reach `workers`, beside the trial's own process (`TRIAL_SHARE` of a
    CPU on one of them)."""
    biggest_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    biggest_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    each = "each trial" if need.workers == 1 else "each worker"
    fits = [_workers_on(node, need) for node in nodes]
    if need.workers > 1 and fits:  # the trial's own process takes a sliver of one node's CPU
        fits = max(([*fits[:i], _workers_on({**node, "CPU": node.get("CPU", 0) - TRIAL_SHARE},
                                            need), *fits[i + 1:]]
                    for i, node in enumerate(nodes)), key=sum)
    if not any(fits):
        return (f"{each} asks for {need.cpu:g} CPU and {need.gpu:g} GPU, but the largest Ray "
                f"node has {biggest_cpu:g} CPU and {biggest_gpu:g} GPU; lower `resources` in the "
                "job spec or point --ray-address at a cluster that has them")
    if sum(fits) < need.workers:
        total_cpu = sum(n.get("CPU", 0) for n in nodes)
        total_gpu = sum(n.get("GPU", 0) for n in nodes)
        return (f"each trial is a group of {need.workers} workers of {need.cpu:g} CPU and "
                f"{need.gpu:g} GPU ({need.workers * need.cpu:g} CPU and "
                f"{need.workers * need.gpu:g} GPU at once), but the cluster's {len(nodes)} "
                f"node(s), {total_cpu:g} CPU and {total_gpu:g} GPU in all, hold only "
                f"{sum(fits)} such workers beside the trial's own process ({TRIAL_SHARE:g} "
                "CPU); lower resources.workers, resources.cpu or "
                "resources.gpu, or point --ray-address at a cluster that has them")
    return None


def _workers_on(node: dict[str, float], need: ResourcesSpec) -> int:
    """How many workers of `need` one node holds (at most `need.workers`: enough)."""
    slack = 1e-9  # Ray's resources are fixed-point; 0.1 * 3 is 0.30000000000000004
    by_cpu = int(node.get("CPU", 0) / need.cpu + slack)
    by_gpu = int(node.get("GPU", 0) / need.gpu + slack) if need.gpu else need.workers
    return min(by_cpu, by_gpu, need.workers)


def _static_costs(backbone: str, img_size: int | None, n_classes: int) -> tuple[float, float, int]:
    key = (backbone, img_size, n_classes)
    if key not in _STATIC:
        _STATIC[key] = static_costs(backbone, img_size, n_classes)
    return _STATIC[key]


_STATIC: dict[tuple[str, int | None, int], tuple[float, float, int]] = {}
STATIC = ("params_m", "macs_g")  # known without running the model (meta device)


def check_limits(spec: JobSpec, n_classes: int) -> None:
    """Refuse a job whose limits no configuration of its space can meet: the smallest choice
    already breaks one (by parameters and MACs, counted; by latency, measured for the choice
    with the fewest MACs, here, on the target)."""
    limits = spec.objective.limits
    if not limits:
        return
    space = spec.search_space()
    size = space.smallest_img_size()
    candidates = []
    for backbone in space.backbones():
        params_m, macs_g, side = _static_costs(backbone, size, n_classes)
        candidates.append((backbone, side, {"params_m": params_m, "macs_g": macs_g}))
    static = {name: limit for name, limit in limits.items() if name in STATIC}
    fitting = [c for c in candidates if not broken_limits(c[2], static)]
    if not fitting:
        smallest = {name: min(candidates, key=lambda c: c[2][name]) for name in static}
        said = "; ".join(f"the smallest {name}, {c[0]} at {c[1]} px, has {c[2][name]:.3g} "
                         f"(objective.limits.{name}: {static[name]:g})"
                         for name, c in smallest.items())
        raise JobError(f"no configuration of the space meets the limits: {said}; raise the "
                       "limit or add smaller backbones to space.backbone")
    if "latency_ms" in limits:
        backbone, side, _ = min(fitting, key=lambda c: c[2]["macs_g"])
        target = spec.objective.latency.target()
        latency = measure_costs(backbone, side, n_classes, target).latency_ms
        assert latency is not None
        if latency > limits["latency_ms"]:
            raise JobError(
                f"no configuration of the space meets objective.limits.latency_ms "
                f"({limits['latency_ms']:g}): the one with the fewest MACs, {backbone} at {side} "
                f"px, takes {latency:.3g} ms on the target ({target.key()}); raise the limit, "
                "add smaller backbones or smaller space.img_size choices")


def feasible_portfolio(
    spec: JobSpec, portfolio: tuple[dict[str, Any], ...], n_classes: int
) -> tuple[dict[str, Any], ...]:
    """The warm-start members whose parameters and MACs fit the job's limits: a member over a
    limit would only cost a trial."""
    static = {name: limit for name, limit in spec.objective.limits.items() if name in STATIC}
    if not static:
        return portfolio
    space = spec.search_space()
    size = space.smallest_img_size()
    kept = []
    for member in portfolio:
        if "backbone" not in space.admits(member):  # the space samples another one instead
            kept.append(member)
            continue
        params_m, macs_g, _ = _static_costs(member["backbone"], member.get("img_size", size),
                                            n_classes)
        if not broken_limits({"params_m": params_m, "macs_g": macs_g}, static):
            kept.append(member)
    return tuple(kept)
