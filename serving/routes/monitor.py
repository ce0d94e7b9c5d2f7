"""`GET /models/{name}/monitor`: the served model's recent windows against its reference, with
the alerts they raise (what `automl monitor NAME --json` prints, from the same store)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from serving.errors import ClientError
from serving.monitor import parse_window
from serving.state import Server, server

router = APIRouter(tags=["monitor"])
State = Annotated[Server, Depends(server)]


@router.get("/models/{name}/monitor")
async def monitor(
    name: str, state: State, window: str = "1h",
    windows: Annotated[int, Query(ge=1, le=1000)] = 24,
) -> dict[str, Any]:
    if name != state.name:
        raise ClientError(f"no model {name[:100]!r} here; this server serves {state.name!r}", 404)
    if state.watch is None:
        raise ClientError("monitoring is off for this server (no store, or no reference.json "
                          "beside the model: serve a version `automl deploy` wrote)", 404)
    try:
        parse_window(window)
    except ValueError as error:
        raise ClientError(f"window: {error}", 400) from None
    watch = state.watch
    return await run_in_threadpool(watch.document, window, windows)
