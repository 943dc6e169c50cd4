"""The review routes: a job's review queue, decisions on its items, and the audit trail."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from app.core import pagination
from app.core.deps import SessionDep, TenantDep
from app.review import service
from app.review.schemas import ReviewCreate, ReviewOut, ReviewPage, ReviewQueue

router = APIRouter(prefix="/v1/jobs", tags=["review"])
PROBLEM = {"content": {"application/problem+json": {}}}


@router.get("/{job_id}/review-queue", response_model=ReviewQueue, responses={404: PROBLEM, 409: PROBLEM})
def get_review_queue(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="how many items of the queue")] = 20,
):
    """The job's items not reviewed yet, most worth a person's look first: the chance the label is
    wrong, weighted by how much the job confuses the item's pair of classes, plus the outside mass of
    a suspect candidate set (each item's `benefit`)."""
    out = service.queue(session, tenant, job_id, limit)
    session.commit()
    return out


@router.post(
    "/{job_id}/reviews", status_code=201, response_model=ReviewOut, responses={404: PROBLEM, 409: PROBLEM, 422: PROBLEM}
)
def create_review(job_id: uuid.UUID, body: ReviewCreate, session: SessionDep, tenant: TenantDep):
    """Record a decision on one of the job's items: a class, or `none_of_these`. Every decision is
    kept; an item's latest counts, in the labels export (`reviewed`) and for the next job on the
    dataset (a class becomes the item's candidate set alone; none of these leaves the other classes)."""
    out = service.decide(session, tenant, job_id, body)
    session.commit()
    return out


@router.get("/{job_id}/reviews", response_model=ReviewPage, responses={400: PROBLEM, 404: PROBLEM})
def list_reviews(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    item_id: Annotated[str | None, Query(min_length=1, max_length=255, description="only this item's")] = None,
    latest: Annotated[bool, Query(description="only each item's latest decision (the one that counts)")] = False,
    limit: pagination.Limit = 100,
    cursor: pagination.Cursor = None,
):
    """The decisions on the items of the job's dataset (made on this job's labels or another's), in
    the order they were made, with reviewer and time: the audit trail."""
    out = service.decisions(session, tenant, job_id, cursor, limit, item_id, latest)
    session.commit()
    return out
