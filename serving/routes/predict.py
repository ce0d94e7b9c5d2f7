"""`POST /predict` (image files in, a label per file out) and `POST /feedback` (the true label
of an answered prediction, for monitoring)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, BackgroundTasks, Depends, Request
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
async def predict(request: Request, state: State, background: BackgroundTasks) -> list[Prediction]:
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
    crops = [p for p in prepared if not isinstance(p, BaseException)]
    results = await asyncio.gather(*(state.batcher.submit(crop[None]) for crop, _, _ in crops))
    answers, chosen = [], []
    for outputs in results:
        index, label, probability = state.model.label(outputs[PROBABILITIES][0])
        answers.append(Prediction(prediction_id=uuid.uuid4().hex, label=label,
                                  probability=probability))
        chosen.append(index)
        state.metrics.predictions.labels(state.name, label).inc()
    if state.recording is not None:
        background.add_task(_record, state, answers, chosen, crops)
    return answers


def _prepare(state: Server, data: bytes, i: int, n: int) -> tuple[np.ndarray, int, int]:
    try:
        return state.model.prepare(data)
    except ClientError as error:
        if n > 1:
            error.message = f"file {i + 1} of {n}: {error.message}"
        raise


def _record(state: Server, answers: list[Prediction], chosen: list[int],
            crops: list[tuple[np.ndarray, int, int]]) -> None:
    """After the answer is sent (a background task, in a worker thread)."""
    assert state.recording is not None
    now = time.time()
    state.recording.put([
        Served(prediction_id=a.prediction_id, model=state.name, version=state.version,
               label=index, confidence=a.probability, signature=signature(crop, width, height),
               at=now)
        for a, index, (crop, width, height) in zip(answers, chosen, crops, strict=True)
    ])


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
