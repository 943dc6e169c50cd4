from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.ml.config import CleanConfig

JobState = Literal["queued", "featurizing", "training", "succeeded", "failed", "cancelling", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "6f1c2a8e-0000-4000-8000-000000000000",
                    "config": {"objective": {"name": "proden"}, "train": {"epochs": 20, "seed": 1}},
                }
            ]
        },
    )
    dataset_id: uuid.UUID
    config: CleanConfig = Field(default_factory=CleanConfig, description="the engine's typed config; defaults apply")


class JobProgress(BaseModel):
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    last_loss: float | None = None
    eta_seconds: float | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    dataset_id: uuid.UUID
    state: JobState
    config: dict
    config_hash: str
    progress: JobProgress
    error: str | None
    attempt: int = Field(description="deliveries of the job so far: 1, plus one each time the reaper drove it on")
    heartbeat_at: datetime | None = Field(
        None, description="the last sign of life from whatever works on the job; the reaper acts when it is stale"
    )
    classifier_id: uuid.UUID | None = None
    metrics: dict | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None


class JobSummary(BaseModel):
    """A job in a list: state, progress and timestamps, without its config and metrics (the detail
    route has those)."""

    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    dataset_id: uuid.UUID
    state: JobState
    config_hash: str
    progress: JobProgress
    error: str | None
    attempt: int
    classifier_id: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
