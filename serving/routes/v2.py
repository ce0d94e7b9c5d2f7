"""The KServe v2 / Open Inference Protocol over HTTP/JSON: health, model metadata and readiness,
and inference on JSON tensors (uint8 NCHW crops, as the ONNX graph takes them)."""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Response

from serving.errors import ClientError
from serving.model import NUMPY
from serving.state import Server, server
from serving.wire import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ResponseOutput,
    ServerMetadata,
    TensorMetadata,
)

router = APIRouter(prefix="/v2", tags=["v2"])
SERVER_VERSION = "0.1.0"
State = Annotated[Server, Depends(server)]


@router.get("")
def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="automl", version=SERVER_VERSION, extensions=[])


@router.get("/health/live")
def live() -> Live:
    return Live(live=True)


@router.get("/health/ready", responses={503: {"model": Ready}})
def ready(state: State, response: Response) -> Ready:
    """The status code is the answer (a Kubernetes readinessProbe reads it): 200 or 503."""
    if not state.serving:
        response.status_code = 503
    return Ready(ready=state.serving)


@router.get("/models/{name}")
def metadata(name: str, state: State) -> ModelMetadata:
    _known(name, state)
    model = state.model
    return ModelMetadata(
        name=state.name, versions=[state.version], platform="onnxruntime",
        inputs=[TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                for s in model.inputs],
        outputs=[TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
                 for s in model.outputs],
    )


@router.get("/models/{name}/versions/{version}")
def version_metadata(name: str, version: str, state: State) -> ModelMetadata:
    _known(name, state, version)
    return metadata(name, state)


@router.get("/models/{name}/ready", responses={503: {"model": ModelReady}})
def model_ready(name: str, state: State, response: Response) -> ModelReady:
    _known(name, state)
    if not state.serving:
        response.status_code = 503
    return ModelReady(name=state.name, ready=state.serving)


@router.post("/models/{name}/infer")
async def infer(name: str, body: InferenceRequest, state: State) -> InferenceResponse:
    _known(name, state)
    return await _infer(body, state)


@router.post("/models/{name}/versions/{version}/infer")
async def infer_version(name: str, version: str, body: InferenceRequest,
                        state: State) -> InferenceResponse:
    _known(name, state, version)
    return await _infer(body, state)


async def _infer(body: InferenceRequest, state: State) -> InferenceResponse:
    spec = state.model.input
    if len(body.inputs) != 1 or body.inputs[0].name != spec.name:
        given = [i.name for i in body.inputs]
        raise ClientError(f"expected one input named {spec.name!r}, got {given}")
    tensor = body.inputs[0]
    if tensor.datatype != spec.datatype:
        raise ClientError(f"input {spec.name!r} has datatype {spec.datatype}, "
                          f"got {tensor.datatype}")
    expected = spec.shape
    if len(tensor.shape) != len(expected) or any(
            e not in (-1, g) for e, g in zip(expected, tensor.shape, strict=True)) or min(
            tensor.shape, default=0) < 1:
        raise ClientError(f"input {spec.name!r} has shape {expected} (-1: any), "
                          f"got {tensor.shape}")
    rows = _array(tensor.data, tensor.shape, spec.datatype)
    wanted = [o.name for o in body.outputs] if body.outputs else state.model.output_names
    unknown = [o for o in wanted if o not in state.model.output_names]
    if unknown:
        raise ClientError(f"no output named {unknown[0]!r}; the model's outputs are "
                          f"{state.model.output_names}")
    results = await state.batcher.submit(rows)
    specs = {s.name: s for s in state.model.outputs}
    return InferenceResponse(
        model_name=state.name, model_version=state.version, id=body.id or uuid.uuid4().hex,
        outputs=[ResponseOutput(name=o, shape=list(results[o].shape),
                                datatype=specs[o].datatype, data=results[o].ravel().tolist())
                 for o in wanted],
    )


def _array(data: list[Any], shape: list[int], datatype: str) -> np.ndarray:
    """The request's data as the model's dtype, checked: element count, kind, range."""
    try:
        raw = np.asarray(data)
    except ValueError:
        raise ClientError("the input's data is ragged: send a flat row-major list") from None
    if raw.size != math.prod(shape):
        raise ClientError(f"the input's data has {raw.size} elements, its shape {shape} "
                          f"needs {math.prod(shape)}")
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind in "iu":
        if raw.size and raw.dtype.kind not in "iub":
            raise ClientError(f"the input's data must be integers for {datatype}")
        info = np.iinfo(dtype.name)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            raise ClientError(f"the input's data is outside {datatype}'s range "
                              f"[{info.min}, {info.max}]")
    return raw.astype(dtype).reshape(shape)


def _known(name: str, state: Server, version: str | None = None) -> None:
    if name != state.name:
        raise ClientError(f"no model named {name[:100]!r} here; this server serves "
                          f"{state.name!r}", 404)
    if version is not None and version != state.version:
        raise ClientError(f"model {state.name!r} has no version {version[:20]!r}; it serves "
                          f"version {state.version}", 404)
