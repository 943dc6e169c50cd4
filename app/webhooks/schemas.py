from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    UrlConstraints,
    computed_field,
    field_validator,
)

from app.core.pagination import Page

WebhookEvent = Literal["job.succeeded", "job.failed", "job.cancelled"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_utc)]  # SQLite hands back naive UTC


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://ci.example.com/candor", "events": ["job.succeeded", "job.failed"]}]
        },
    )
    url: Annotated[HttpUrl, UrlConstraints(max_length=2048)] = Field(
        description="http(s) URL that receives the events; it must resolve to public addresses"
    )
    events: list[WebhookEvent] = Field(min_length=1, max_length=3, description="the events to send to it")

    @field_validator("events")
    @classmethod
    def _distinct(cls, events: list[str]) -> list[str]:
        return list(dict.fromkeys(events))


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    url: str
    events: list[WebhookEvent]
    created_at: UTCDateTime
    disabled_at: UTCDateTime | None = Field(
        None,
        description="when Candor stopped sending to it after deliveries in a row were given up "
        "(CANDOR_WEBHOOK_DISABLE_AFTER); null while it is enabled",
    )
    disabled_reason: str | None = Field(None, description="why it was disabled, with the last attempt's outcome")

    @computed_field(description="false once disabled: no new messages, pending ones wait for POST .../enable")
    @property
    def enabled(self) -> bool:
        return self.disabled_at is None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="whsec_<base64>: verify each message's webhook-signature with it (Standard Webhooks). "
        "Shown in this answer only"
    )


class JobEventLinks(BaseModel):
    job: str
    labels: str | None = None
    classifier: str | None = None


class JobEventData(BaseModel):
    job_id: uuid.UUID
    dataset_id: uuid.UUID
    state: Literal["succeeded", "failed", "cancelled"]
    error: str | None
    classifier_id: uuid.UUID | None
    links: JobEventLinks = Field(description="paths on this API; absolute URLs when CANDOR_PUBLIC_URL is set")


class WebhookPayload(BaseModel):
    """The body of every message: ``{type, timestamp, data}``."""

    type: WebhookEvent
    timestamp: UTCDateTime = Field(description="when the job reached its state")
    data: JobEventData


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    number: int
    started_at: UTCDateTime
    duration_ms: int
    status_code: int | None = Field(description="the receiver's HTTP status; null when none came back")
    response: str | None = Field(description="the first 1,000 characters of the receiver's answer")
    error: str | None = Field(description="why no answer came back: a timeout, a refused address, ...")


class DeliveryOut(BaseModel):
    id: uuid.UUID = Field(description="the webhook-id header: the same on every attempt")
    event: WebhookEvent
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: UTCDateTime | None = Field(description="when the next attempt is due; null once settled")
    created_at: UTCDateTime
    finished_at: UTCDateTime | None = Field(description="when it was delivered or given up")
    payload: WebhookPayload
    attempts: list[AttemptOut] = Field(description="oldest first")


class WebhookPage(Page[WebhookOut]):
    pass


class DeliveryPage(Page[DeliveryOut]):
    pass
