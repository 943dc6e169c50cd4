from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page
from app.jobs.schemas import MetricsBase

Base64Image = Annotated[str, Field(json_schema_extra={"contentEncoding": "base64"})]


class ClassifierMetrics(MetricsBase):
    final_epoch: dict[str, Any] | None = Field(None, description="the record of the last training epoch")


class ClassifierOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    job_id: uuid.UUID
    dataset_id: uuid.UUID
    version: str
    backbone: str
    backbone_id: str
    classes: list[str]
    metrics: ClassifierMetrics
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


class ClassifierPage(Page[ClassifierSummary]):
    pass


CANDIDATES = "restrict the answer to these classes (each one of the classifier's)"
TOP_K = "how many classes to return per image, most probable first"


class PredictRequest(BaseModel):
    """The JSON body of /predict: images as base64."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": ["iVBORw0KGgo..."], "top_k": 3, "candidates": ["coat", "shirt"]}]},
    )
    images: list[Base64Image] = Field(
        min_length=1, max_length=256, description="image files (PNG, JPEG, ...), base64 (at most 256)"
    )
    top_k: int = Field(5, ge=1, le=1000, description=TOP_K)
    candidates: list[str] | None = Field(None, description=CANDIDATES)


class PredictForm(BaseModel):
    """The multipart body of /predict: image files as they are."""

    files: list[bytes] = Field(min_length=1, max_length=256, description="image files, one part each (at most 256)")
    top_k: int = Field(5, ge=1, le=1000, description=TOP_K)
    candidates: list[str] | None = Field(None, description=CANDIDATES + "; one part per class")


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
