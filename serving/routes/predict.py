"""`POST /predict` (image files in, a label per file out) and `POST /feedback` (the true label
of an answered prediction, for monitoring)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from serving.errors import ClientError
from serving.model import PROBABILITIES
from serving.signature import signature
from serving.state import Server, server
from serving.wire import Feedback, FeedbackAck, Prediction
from storage.monitoring import Served, UnknownPrediction

router = APIRouter(tags=["predict"])
State = Annotated[Server, Depends(server)]
FIELD = "file"


@router.post("/predict")
async def predict(request: Request, state: State) -> list[Prediction]:
    """One or more images as multipart form field `file`; a prediction per file, in order."""
    form = await request.form(max_files=state.max_files, max_fields=state.max_files)
    try:
        files = [f for f in form.getlist(FIELD) if isinstance(f, UploadFile)]
        if not files:
            raise ClientError(f"no image: send one or more files as multipart form field "
                              f"{FIELD!r} (curl -F {FIELD}=@image.png)")
        images = [await f.read() for f in files]
    finally:
        await form.close()
    prepared = await asyncio.gather(
        *(run_in_threadpool(_prepare, state, data, i, len(images))
          for i, data in enumerate(images)), return_exceptions=True)
    for outcome in prepared:
        if isinstance(outcome, BaseException):
            raise outcome
    inputs = [p for p in prepared if not isinstance(p, BaseException)]
    results = await asyncio.gather(*(state.batcher.submit(crop[None]) for crop, _ in inputs))
    answers, served, now = [], [], time.time()
    for outputs, (_, features) in zip(results, inputs, strict=True):
        index, label, probability = state.model.label(outputs[PROBABILITIES][0])
        answer = Prediction(prediction_id=uuid.uuid4().hex, label=label, probability=probability)
        answers.append(answer)
        state.metrics.predictions.labels(state.name, label).inc()
        if features is not None:
            served.append(Served(prediction_id=answer.prediction_id, model=state.name,
                                 version=state.version, label=index, confidence=probability,
                                 signature=features, at=now))
    if state.recording is not None:
        # queued before the answer leaves (feedback may follow at once), written by the
        # recording thread: never waits on the database
        state.recording.put(served)
    return answers


def _prepare(state: Server, data: bytes, i: int, n: int
             ) -> tuple[np.ndarray, dict[str, float] | None]:
    """The model's input, and its signature when the server records (in a worker thread)."""
    try:
        crop, width, height = state.model.prepare(data)
    except ClientError as error:
        if n > 1:
            error.message = f"file {i + 1} of {n}: {error.message}"
        raise
    return crop, None if state.recording is None else signature(crop, width, height)


@router.post("/feedback")
async def feedback(body: Feedback, state: State) -> FeedbackAck:
    """The true class of a prediction this server answered."""
    recording = state.recording
    if recording is None:
        raise ClientError("monitoring is off: this server records no predictions, so it takes "
                          "no feedback", 404)
    try:
        index = state.model.classes.index(body.label)
    except ValueError:
        shown = ", ".join(state.model.classes[:20])
        more = ", ..." if len(state.model.classes) > 20 else ""
        raise ClientError(f"no class named {body.label[:100]!r}; the model's classes are "
                          f"{shown}{more}", 422) from None

    def forward() -> None:
        try:
            recording.recorder.feedback(state.name, body.prediction_id, index)
        except UnknownPrediction:
            # just answered, maybe still on its way to the store: once more after it arrives
            if not recording.flush():
                raise
            recording.recorder.feedback(state.name, body.prediction_id, index)

    try:
        await run_in_threadpool(forward)
    except UnknownPrediction:
        raise ClientError(f"no prediction {body.prediction_id[:100]!r} of model {state.name!r} "
                          "is recorded (never served, not sampled, or aged out)", 404) from None
    return FeedbackAck(prediction_id=body.prediction_id, label=body.label)
