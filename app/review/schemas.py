"""Request and response bodies of the review routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page


class ReviewCreate(BaseModel):
    """A decision on one item of the job: a class (`label`), or `none_of_these: true`."""

    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(min_length=1, max_length=255, description="the item's id")
    label: str | None = Field(
        None, min_length=1, max_length=255, description="the class the item shows (one of the dataset's classes)"
    )
    none_of_these: bool = Field(
        False, description="the item is none of its candidates: the next job takes the other classes as its set"
    )


class ReviewOut(BaseModel):
    """One decision of the audit trail; an item's latest decision is the one that counts."""

    id: int = Field(description="increasing with time; the latest decision of an item has the largest id")
    item_id: str
    job_id: uuid.UUID | None = Field(description="the job whose labels the reviewer looked at")
    label: str | None = Field(description="the class chosen; null for none of these")
    none_of_these: bool
    reviewer: str = Field(description="`<tenant>/<API key prefix>` of the key that made the decision")
    created_at: datetime


class ReviewPage(Page[ReviewOut]):
    """A page of the audit trail."""


class QueueItem(BaseModel):
    """An item waiting for review, with what the job says about it and why it is where it is."""

    id: str = Field(description="the item's id")
    rank: int = Field(description="1 for the item most worth a look")
    benefit: float = Field(description="the expected benefit of a review (see the README's Review section)")
    label: str
    runner_up: str | None = Field(description="the second most probable candidate")
    confidence: float
    posterior: dict[str, float]
    margin: float
    outside_mass: float
    ambiguous: bool
    candidates_suspect: bool
    prior_label: str | None


class ReviewQueue(BaseModel):
    """The job's items not reviewed yet, most beneficial first."""

    items: list[QueueItem]
    remaining: int = Field(description="items of the job not reviewed yet")
    reviewed: int = Field(description="items of the job with a decision")
