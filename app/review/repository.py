"""Database access for reviews; every read is scoped to the tenant's dataset by the caller."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from app.datasets.models import Item
from app.review.models import Review


def latest_ids(dataset_id: uuid.UUID) -> Select:
    """(item_seq, id of the item's latest review) for every reviewed item of the dataset."""
    return (
        select(Review.item_seq, func.max(Review.id).label("review_id"))
        .where(Review.dataset_id == dataset_id)
        .group_by(Review.item_seq)
    )


def latest(session: Session, dataset_id: uuid.UUID, until: object = None) -> dict[int, Review]:
    """Each reviewed item's latest decision (made at or before ``until`` when given), by item seq."""
    sub = select(Review.item_seq, func.max(Review.id).label("review_id")).where(Review.dataset_id == dataset_id)
    if until is not None:
        sub = sub.where(Review.created_at <= until)
    sub = sub.group_by(Review.item_seq).subquery()
    rows = session.scalars(select(Review).join(sub, sub.c.review_id == Review.id))
    return {r.item_seq: r for r in rows}


def page(
    session: Session, dataset_id: uuid.UUID, after_id: int, limit: int, item_seq: int | None, latest_only: bool
) -> Sequence:
    """Decisions in the order they were made, with their item's id; one more than ``limit``."""
    stmt = (
        select(Review, Item.external_id)
        .join(Item, Item.seq == Review.item_seq)
        .where(Review.dataset_id == dataset_id, Review.id > after_id)
    )
    if item_seq is not None:
        stmt = stmt.where(Review.item_seq == item_seq)
    if latest_only:
        sub = latest_ids(dataset_id).subquery()
        stmt = stmt.join(sub, sub.c.review_id == Review.id)
    return session.execute(stmt.order_by(Review.id).limit(limit + 1)).all()
