"""The model repository `automl deploy` writes and `automl serve-model` reads: Triton's layout,
which KServe's Triton and ONNX runtimes load as they are.

    REPOSITORY/NAME/config.pbtxt        Triton's model configuration (onnxruntime_onnx, dynamic
                                        batching); the server takes its batching from it too
    REPOSITORY/NAME/N/model.onnx        version N (1, 2, ...: one per deploy)
    REPOSITORY/NAME/N/automl.json       where it came from: job, trial, classes, preprocessing,
                                        temperature, test scores, monitoring thresholds
    REPOSITORY/NAME/N/reference.json    the monitoring reference (the job's data, see
                                        serving.monitor)
    REPOSITORY/NAME/N/README.md         the model card

The default repository is AUTOML_HOME/models.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.pbtxt"
MODEL = "model.onnx"
META = "automl.json"
REFERENCE = "reference.json"
CARD = "README.md"


def versions(model_dir: Path) -> list[int]:
    """The model's version numbers, ascending (folders named by an integer holding a model)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / MODEL).is_file())


def version_dir(model_dir: Path, version: int | None = None) -> Path | None:
    """Version `version` of the model (None: the latest), or None when there is none."""
    found = versions(model_dir)
    if not found:
        return None
    chosen = found[-1] if version is None else version
    return model_dir / str(chosen) if chosen in found else None
