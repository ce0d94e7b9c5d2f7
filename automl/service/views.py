"""The service's wire shapes, declared once: the job service builds them, the REST API returns
them (and documents them in its OpenAPI schema), the HTTP client parses them back, and the CLI
renders the same objects whether it talks to the API or to the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

# The API's and the dashboard's answer while the database is away: 503, and how many seconds
# to wait before asking again (a PostgreSQL restart takes a few)
RETRY_AFTER_SECONDS = 5
OUTAGE = "database unavailable, retry shortly"

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialState = Literal["running", "complete", "pruned", "failed", "waiting", "paused"]


class Counts(BaseModel):
    running: int
    complete: int
    pruned: int
    failed: int
    budget: int
    paused: int = 0  # freeze-thaw: checkpoint kept, may be resumed; not among `running`


class Best(BaseModel):
    trial: int | None
    value: float | None


class JobView(BaseModel):
    id: str
    name: str
    state: JobState
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    error: str | None
    study: str
    trials: Counts
    objective: str
    best: Best
    test_metrics: dict[str, Any] | None
    dashboard: str


class JobPage(BaseModel):
    jobs: list[JobView]
    total: int
    limit: int
    offset: int


class TrialView(BaseModel):
    number: int
    state: TrialState
    value: float | None  # the validation metric (a Pareto front's costs are in `costs`)
    epochs: int
    intermediate_values: dict[str, float]
    params: dict[str, Any]
    config: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None
    costs: dict[str, float] | None = None  # measured before it trained (deployment-aware jobs)
    over_limit: dict[str, list[float]] | None = None  # {cost: [value, limit]}: it never trained


class TrialPage(BaseModel):
    trials: list[TrialView]
    total: int
    limit: int
    offset: int


class BestView(BaseModel):
    job: str
    trial: int
    objective: str
    value: float | None
    config: dict[str, Any]
    test_metrics: dict[str, Any]
    deployable: dict[str, Any] | None = Field(
        None, description="the distill stage's result: its study, the teacher / student alone / "
        "distilled / int8 comparison; pull it from /jobs/{id}/deployable/checkpoint")


class FrontMember(BaseModel):
    trial: int
    metric: float
    costs: dict[str, float]
    backbone: str | None
    img_size: int | None
    test_metrics: dict[str, Any]


class ParetoView(BaseModel):
    job: str
    metric: str
    costs: list[str]
    final: bool  # scored on the test split once the job ended; until then, the front so far
    members: list[FrontMember]
