"""`automl deploy`: a job's published model as a new version in a Triton/KServe model repository
(serving.repository's layout), and in the MLflow Model Registry when the job is tracked.

A version is built whole in a staging folder inside the model's folder and renamed into place
(`REPOSITORY/NAME/N`), so a failure leaves nothing half-written; `config.pbtxt` is replaced
atomically. What a version holds:

- model.onnx: the publication's ONNX file (a deployable's int8 file when it has one: that one
  passed the job's accuracy and speed checks), else exported here from the checkpoint;
- automl.json: where it came from (job, trial, source, ...), classes, preprocessing,
  temperature, test scores, and the job spec's `monitor:` thresholds;
- README.md: the model card;
- reference.json: the monitoring reference (`build_reference`), the shape `serving.monitor` reads:

    {"classes": [...], "test_metrics": {...}, "test_images": n,
     "class_distribution": {"test_true": [fraction per class], "test_predicted": [...]},
     "confidence": {"edges": [0, 1/15, ..., 1], "test": [fraction per bin]},
     "signature": {FEATURE: {"edges": [e0, ..., ek], "train": [fraction per bin]}}}

  `confidence` bins are (edges[i], edges[i+1]] (the first one closed at 0), as the evaluation's
  reliability bins. A `signature` feature's edges are the *interior* cut points of the training
  values' deciles (10th..90th percentile, each an observed value: numpy's "lower" quantile;
  repeated values merged, so a feature with one value has one edge), and its k+2 bins are open
  at both ends: (-inf, e0], (e0, e1], ..., (ek, +inf); a value's bin is
  `numpy.searchsorted(edges, value, side="left")`. `signature` is left out (with a warning)
  when the job's dataset cannot be read where deploy runs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from automl.search import keys
from automl.settings import Settings
from serving import repository
from serving.signature import FEATURES, signature
from storage.optuna_storage import optuna_storage, retry
from workers.errors import UserError

log = logging.getLogger(__name__)

MAX_BATCH = 32
QUEUE_DELAY_US = 1000
SIGNATURE_IMAGES = 2000  # training images the input-signature reference is computed on
CONFIDENCE_BINS = 15
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# ONNX TensorProto element types -> Triton's data types
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16",
                 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL",
                 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
                 16: "TYPE_BF16"}


class DeployError(UserError):
    """A deploy that cannot be done as asked; nothing was written."""


@dataclass
class Deployed:
    name: str
    version: int
    folder: Path  # REPOSITORY/NAME/N
    repository: Path
    source: str  # "best" or "deployable"
    int8: bool
    registered: str | None = None  # models:/NAME/V
    warnings: list[str] = field(default_factory=list)


def check_name(name: str, option: str = "--name") -> str:
    """A model name that is one safe folder name (Triton's model names are folder names)."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise DeployError(
            f"{option} {name[:64]!r} is not a model name: use 1-128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit")
    return name


def check_repository(path: Path) -> Path:
    """The repository folder, refused up front when it could not be made or written; nothing
    is created here (a deploy that fails later leaves no empty folders behind)."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise DeployError(f"--repository {path} {what}; give a folder (made if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DeployError(f"cannot write to --repository {path}: permission denied on "
                          f"{existing}")
    return path


def deploy(settings: Settings, folder: Path, job_id: str, source: str, name: str,
           root: Path, say: Callable[[str], None] = lambda line: None) -> Deployed:
    """Add the model folder `automl pull` wrote for the job (its best model, or its deployable
    one: `source`) as the next version of NAME in the repository `root`."""
    storage = optuna_storage(settings.storage_url)
    study = retry(lambda: optuna.load_study(study_name=job_id, storage=storage),
                  what="read the job's study")
    spec: dict[str, Any] = study.user_attrs.get(keys.SPEC) or {}
    return _deploy_folder(settings, folder, job_id, spec, check_name(name),
                          check_repository(root), source, say)


def _deploy_folder(settings: Settings, folder: Path, job_id: str, spec: dict[str, Any],
                   name: str, root: Path, source: str,
                   say: Callable[[str], None]) -> Deployed:
    onnx_file, int8 = _onnx_of(folder, say)
    meta = json.loads((folder / "automl.json").read_text())
    model_dir = root / name
    # the outermost folder this deploy makes, removed again if it fails
    made = next((p for p in reversed((model_dir, *model_dir.parents)) if not p.exists()), None)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".deploy-", dir=model_dir))
    try:
        shutil.copyfile(onnx_file, staging / repository.MODEL)
        model = _onnx_description(staging / repository.MODEL)
        info = _automl_json(meta, model, job_id, source, int8, spec)
        (staging / repository.META).write_text(json.dumps(info, indent=2, sort_keys=True))
        if (folder / "README.md").is_file():
            shutil.copyfile(folder / "README.md", staging / repository.CARD)
        warnings: list[str] = []
        reference = build_reference(folder, info, warnings)
        (staging / repository.REFERENCE).write_text(json.dumps(reference, indent=1))
        config = triton_config(name, model)
        version = _next_version(model_dir)
        registered = _register(settings, spec, staging, folder, name, info)
        version = _into_place(staging, model_dir, version)
        _replace(model_dir / repository.CONFIG, config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return Deployed(name, version, model_dir / str(version), root, source, int8, registered,
                    warnings)


def _onnx_of(folder: Path, say: Callable[[str], None]) -> tuple[Path, bool]:
    """The publication's ONNX file (its int8 one first), else one exported here."""
    if (folder / "model.int8.onnx").is_file():
        say("using the deployable's int8 model (model.int8.onnx): it passed the job's int8 "
            "accuracy and speed checks")
        return folder / "model.int8.onnx", True
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx", False
    from workers.export import export_onnx  # torch: only when there is no ONNX file to take

    say("the publication has no ONNX file: exporting one (checked against PyTorch)")
    done = export_onnx(folder, folder / "model.onnx")
    return done.path, False


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: list[int]  # without the batch dim; -1 for a dynamic one


@dataclass(frozen=True)
class OnnxModel:
    inputs: list[Tensor]
    outputs: list[Tensor]
    metadata: dict[str, str]


def _onnx_description(path: Path) -> OnnxModel:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def tensors(values: Any) -> list[Tensor]:
        found = []
        for value in values:
            if value.name in initializers:
                continue
            kind = value.type.tensor_type
            if kind.elem_type not in _TRITON_TYPES:
                raise DeployError(f"the ONNX model's {value.name} has element type "
                                  f"{kind.elem_type}, which Triton has no type for")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
            found.append(Tensor(value.name, _TRITON_TYPES[kind.elem_type], dims[1:]))
        return found

    return OnnxModel(tensors(model.graph.input), tensors(model.graph.output),
                     {p.key: p.value for p in model.metadata_props})


def triton_config(name: str, model: OnnxModel, max_batch_size: int = MAX_BATCH,
                  queue_delay_us: int = QUEUE_DELAY_US) -> str:
    """Triton's model configuration (protobuf text format) for the ONNX model: its tensors as
    the graph declares them (the batch dim left out, as Triton wants with max_batch_size > 0),
    dynamic batching, the latest version served."""

    def block(kind: str, tensors: list[Tensor]) -> str:
        rows = ",\n".join(
            f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n'
            f'    dims: [ {", ".join(map(str, t.dims))} ]\n  }}' for t in tensors)
        return f"{kind} [\n{rows}\n]\n"

    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            + block("input", model.inputs) + block("output", model.outputs)
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            + "version_policy: { latest: { num_versions: 1 } }\n")


def _automl_json(meta: dict[str, Any], model: OnnxModel, job_id: str, source: str, int8: bool,
                 spec: dict[str, Any]) -> dict[str, Any]:
    """From the ONNX file's own metadata where it has it (what the graph was exported for: the
    preprocessing with its resize), else the publication's automl.json."""
    props = model.metadata

    def from_onnx(key: str, default: Any) -> Any:
        return json.loads(props[key]) if key in props else default

    preprocessing = from_onnx("preprocessing", meta.get("preprocessing"))
    if preprocessing is not None and "resize" not in preprocessing:
        from workers.model.preprocessing import stored_size

        preprocessing = {**preprocessing, "resize": stored_size(
            int(preprocessing["img_size"]), float(preprocessing["crop_pct"]))}
    return {
        "job": job_id, "trial": meta.get("trial"), "source": source,
        "study": meta.get("job", job_id),  # a deployable's: the distill stage's study
        "backbone": props.get("backbone") or (meta.get("trial_config") or {}).get("backbone"),
        "classes": from_onnx("classes", meta.get("classes")),
        "preprocessing": preprocessing,
        "temperature": from_onnx("temperature", meta.get("temperature")),
        "test_metrics": meta.get("test_metrics") or {},
        "deployed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "int8": int8,
        "monitor": spec.get("monitor"),
        "inputs": [t.__dict__ for t in model.inputs],
        "outputs": [t.__dict__ for t in model.outputs],
    }


def build_reference(folder: Path, info: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The monitoring reference (the module's docstring has its shape)."""
    classes = list(info["classes"])
    reference: dict[str, Any] = {"classes": classes, "test_metrics": info["test_metrics"]}
    evaluation_file = folder / "evaluation.json"
    if evaluation_file.is_file():
        evaluation = json.loads(evaluation_file.read_text())
        matrix = np.asarray(evaluation["confusion_matrix"], dtype=float)
        total = float(matrix.sum())
        reference["test_images"] = int(total)
        reference["class_distribution"] = {
            "test_true": _fractions(matrix.sum(axis=1)),
            "test_predicted": _fractions(matrix.sum(axis=0))}
        calibration = evaluation.get("calibration") or {}
        bins = calibration.get("bins_calibrated") if calibration.get("temperature") else None
        bins = bins or calibration.get("bins") or []
        if bins:
            edges = [float(bins[0]["lower"])] + [float(b["upper"]) for b in bins]
            reference["confidence"] = {"edges": edges,
                                       "test": _fractions([b["count"] for b in bins])}
    else:
        warnings.append("the publication has no evaluation.json: reference.json has no test "
                        "class distribution or confidence (publish the job again to add them)")
    try:
        reference["signature"] = signature_reference(folder, info["preprocessing"])
    except Exception as error:  # any reason the dataset cannot be read here
        warnings.append(f"reference.json has no input signature: the job's training images "
                        f"cannot be read here ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200] if str(error) else ''}); deploy "
                        "where the dataset is to monitor input drift")
    return reference


def _fractions(counts: Any) -> list[float]:
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


def signature_reference(folder: Path, preprocessing: dict[str, Any],
                        limit: int = SIGNATURE_IMAGES) -> dict[str, dict[str, list[float]]]:
    """Each input-signature feature's decile bins on a seeded sample of the training split,
    each image decoded as the model server does (shorter side to the stored size, center crop)."""
    from workers.config import TrialConfig
    from workers.data.sources import load_index
    from workers.model.checkpoint import read_info

    config = TrialConfig.from_dict(read_info(folder)["trial"])
    return index_signature(load_index(config.data), preprocessing, limit)


def index_signature(index: Any, preprocessing: dict[str, Any],
                    limit: int = SIGNATURE_IMAGES) -> dict[str, dict[str, list[float]]]:
    """`signature_reference` of a `DatasetIndex`'s training split."""
    rows = np.asarray(index.split_indices["train"])
    if len(rows) == 0:
        raise DeployError("the dataset has no training images")
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(0).choice(rows, limit, replace=False))
    size, resize = int(preprocessing["img_size"]), int(preprocessing["resize"])
    interpolation = str(preprocessing.get("interpolation", "bicubic"))
    values: dict[str, list[float]] = {f: [] for f in FEATURES}
    for width, height, crop in _decoded(index, rows, resize, size, interpolation):
        for feature, value in signature(crop, width, height).items():
            values[feature].append(value)
    return {feature: _decile_bins(np.asarray(v)) for feature, v in values.items()}


def _decoded(index: Any, rows: np.ndarray, resize: int, size: int,
             interpolation: str) -> Any:
    """(width, height, crop) per row: the image's own size from its header, the model's crop."""
    import io

    from PIL import Image

    from workers.data.images import decode, decode_one

    def crop(pixels: np.ndarray) -> np.ndarray:
        top, left = (pixels.shape[1] - size) // 2, (pixels.shape[2] - size) // 2
        return pixels[:, top:top + size, left:left + size]

    if index.stored is None:
        for row in rows:
            path = index.paths[int(row)]
            with Image.open(path) as image:
                width, height = image.size
            yield width, height, crop(decode_one(path, resize, interpolation))
        return
    wanted = {int(r) for r in rows}
    last, position = max(wanted), 0
    for batch in index.stored.encoded(256):
        if position > last:
            return
        for encoded in batch:
            if position in wanted:
                with Image.open(io.BytesIO(encoded.data)) as image:
                    width, height = image.size
                yield width, height, crop(decode(io.BytesIO(encoded.data), resize,
                                                 interpolation, encoded.where))
            position += 1


def _decile_bins(values: np.ndarray) -> dict[str, list[float]]:
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9), method="lower"))
    which = np.searchsorted(edges, values, side="left")
    counts = np.bincount(which, minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "train": _fractions(counts)}


def _next_version(model_dir: Path) -> int:
    """One above every numbered folder (a version whose model file went missing included)."""
    taken = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(taken, default=0) + 1


def _into_place(staging: Path, model_dir: Path, version: int) -> int:
    """Rename the staged version to the first free number from `version` (a deploy beside this
    one may take a number first: rename does not replace a folder with files)."""
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from a server running as another user
    for number in range(version, version + 100):
        target = model_dir / str(number)
        if target.exists():
            continue
        try:
            staging.rename(target)
            return number
        except OSError:
            if not target.exists():
                raise
    raise DeployError(f"cannot find a free version number in {model_dir}")


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _register(settings: Settings, spec: dict[str, Any], staging: Path, folder: Path,
              name: str, info: dict[str, Any]) -> str | None:
    """The version in the MLflow Model Registry when the job is tracked; models:/NAME/V."""
    tracking = spec.get("tracking") or {}
    uri = tracking.get("mlflow") or settings.mlflow_uri
    if uri is None:
        return None
    from automl.tune.tracking.registry import register

    files = [staging / repository.CARD] + [folder / f for f in ("evaluation.json",
                                                                 "evaluation.html")]
    version = register(uri, tracking.get("experiment") or "automl", name,
                       staging / repository.MODEL, info, [f for f in files if f.is_file()])
    return f"models:/{name}/{version}"
