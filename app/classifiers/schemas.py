from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ClassifierOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    job_id: uuid.UUID
    dataset_id: uuid.UUID
    version: str
    backbone: str
    backbone_id: str
    classes: list[str]
    metrics: dict
    created_at: datetime


class ClassifierSummary(BaseModel):
    """A classifier in a list: its class count, not its class list or metrics (the detail has them)."""

    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    job_id: uuid.UUID
    dataset_id: uuid.UUID
    version: str
    backbone: str
    backbone_id: str
    class_count: int
    created_at: datetime


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": ["iVBORw0KGgo..."], "top_k": 3, "candidates": ["coat", "shirt"]}]},
    )
    images: list[str] = Field(min_length=1, max_length=256, description="image files, base64 (at most 256)")
    top_k: int = Field(5, ge=1, le=1000)
    candidates: list[str] | None = Field(None, description="restrict the answer to these classes")


class Scored(BaseModel):
    label: str
    p: float


class Prediction(BaseModel):
    index: int
    label: str
    top: list[Scored]


class PredictResponse(BaseModel):
    classifier_id: uuid.UUID
    version: str
    predictions: list[Prediction]
