"""The server's request and response bodies, declared once: the KServe v2 / Open Inference
Protocol's JSON shapes (https://kserve.github.io/website/docs/concepts/architecture/data-plane/
v2-protocol), and `/predict`'s and `/feedback`'s own."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]  # row-major, flat or nested


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]  # row-major, flat


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str
    outputs: list[ResponseOutput]


class Prediction(BaseModel):
    prediction_id: str = Field(description="send it back with POST /feedback")
    label: str
    probability: float


class Feedback(BaseModel):
    prediction_id: str = Field(min_length=1, max_length=100)
    label: str = Field(min_length=1, max_length=1000, description="the true class's name")


class FeedbackAck(BaseModel):
    prediction_id: str
    label: str
