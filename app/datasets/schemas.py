from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.pagination import Page
from app.ml.text import Text
from app.ml.votes import MAX_ANNOTATIONS, CandidatePolicy


class DatasetCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "shoes-2026-11", "classes": ["sneaker", "sandal", "ankle boot"]}]},
    )
    name: Text = Field(min_length=1, max_length=200)
    classes: list[Text] = Field(min_length=2, max_length=100_000)
    candidate_policy: CandidatePolicy = Field(
        default_factory=CandidatePolicy, description="how items' annotations become candidate sets"
    )


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    classes: list[str]
    candidate_policy: CandidatePolicy = Field(description="how items' annotations become candidate sets")
    created_at: datetime

    @field_validator("candidate_policy", mode="before")
    @classmethod
    def _default_policy(cls, value: object) -> object:
        return CandidatePolicy() if value is None else value  # datasets created before policies existed


class DatasetSummary(BaseModel):
    """A dataset in a list: its class count, not its class list (that is in the detail)."""

    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    name: str
    class_count: int
    created_at: datetime


class DatasetDetail(DatasetOut):
    item_count: int
    mean_candidates: float | None = Field(description="mean candidate-set size")
    class_histogram: dict[str, int] = Field(description="how many candidate sets hold each class")


class Annotation(BaseModel):
    """One annotator's label for an item."""

    model_config = ConfigDict(extra="forbid")
    annotator: Text = Field(min_length=1, max_length=255, description="the annotator's id")
    label: Text = Field(description="the class the annotator chose")
    ground_truth: bool = Field(False, description="a reviewed label: with ground_truth_wins it alone is the set")


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Text = Field(min_length=1, max_length=255, description="your id for the item (stable across uploads)")
    image_base64: str = Field(
        description="the image file's bytes (PNG, JPEG, ...), base64", json_schema_extra={"contentEncoding": "base64"}
    )
    candidates: list[Text] | None = Field(
        None, description="candidate labels; the true one is among them. Given with annotations, these are the set"
    )
    annotations: list[Annotation] | None = Field(
        None,
        max_length=MAX_ANNOTATIONS,
        description="annotators' labels; without candidates, the dataset's candidate policy derives the set",
    )


class ItemsBatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"items": [{"id": "img-1", "image_base64": "iVBORw0KGgo...", "candidates": ["sneaker", "sandal"]}]}
            ]
        },
    )
    items: list[ItemIn] = Field(min_length=1)


class ItemOutcome(BaseModel):
    index: int
    id: str | None
    status: Literal["created", "unchanged", "rejected"]
    reason: str | None = None


class IngestResult(BaseModel):
    created: int
    unchanged: int
    items: list[ItemOutcome]


class ItemOut(BaseModel):
    id: str
    image_sha256: str
    candidates: list[str]
    annotations: list[Annotation] = Field(description="the annotators' labels as sent (empty when none were)")
    source: dict[str, Any] | None = Field(
        None,
        description="where an imported item came from: for a Label Studio import `{tool: labelstudio, task, "
        "from_name, to_name}` (the task id and the label config's <Choices> and <Image> names); null otherwise",
    )
    created_at: datetime


class ItemPage(Page[ItemOut]):
    pass


class DatasetPage(Page[DatasetSummary]):
    pass
