"""Database access for webhooks. Endpoints are read scoped to a tenant here; deliveries are read
through their endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.core import pagination
from app.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


def get_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    return session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    )


def list_endpoints(session: Session, tenant_id: uuid.UUID, cursor: str | None, limit: int) -> Sequence[Row]:
    """A page of the tenant's endpoints, newest first, without their secrets."""
    stmt = select(
        WebhookEndpoint.id,
        WebhookEndpoint.url,
        WebhookEndpoint.events,
        WebhookEndpoint.created_at,
        WebhookEndpoint.disabled_at,
        WebhookEndpoint.disabled_reason,
    ).where(WebhookEndpoint.tenant_id == tenant_id)
    return session.execute(
        pagination.newest_first(stmt, WebhookEndpoint.created_at, WebhookEndpoint.id, cursor, limit)
    ).all()


def count_endpoints(session: Session, tenant_id: uuid.UUID) -> int:
    return session.scalar(select(func.count()).where(WebhookEndpoint.tenant_id == tenant_id)) or 0


def delete_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    """Remove an endpoint and, by cascade, its deliveries; False when the tenant has no such endpoint."""
    return (
        session.execute(
            delete(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def subscribers(session: Session, tenant_id: uuid.UUID, event: str) -> list[uuid.UUID]:
    """The tenant's enabled endpoints that want ``event`` (a disabled endpoint gets no new messages)."""
    rows = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.events).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.disabled_at.is_(None)
        )
    ).all()
    return [endpoint_id for endpoint_id, events in rows if event in events]


def enable_endpoint(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    """Turn a disabled endpoint back on with a clean count; its pending deliveries resume."""
    return (
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
            .values(disabled_at=None, disabled_reason=None, failed_in_a_row=0)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def list_deliveries(session: Session, endpoint_id: uuid.UUID, cursor: str | None, limit: int) -> Sequence:
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    stmt = pagination.newest_first(stmt, WebhookDelivery.created_at, WebhookDelivery.id, cursor, limit)
    return session.scalars(stmt).all()


def attempts_of(session: Session, delivery_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[WebhookAttempt]]:
    out: dict[uuid.UUID, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        stmt = (
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(delivery_ids)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        )
        for attempt in session.scalars(stmt):
            out[attempt.delivery_id].append(attempt)
    return out


# --- the sender's side: no tenant, a delivery id from a message --------------------------------


def _enabled_endpoint():
    return WebhookDelivery.endpoint_id.in_(select(WebhookEndpoint.id).where(WebhookEndpoint.disabled_at.is_(None)))


def claim(session: Session, delivery_id: uuid.UUID, now: datetime, busy_until: datetime) -> Row | None:
    """Take a due delivery for one attempt: (attempt number, payload, url, secret), or None when it is
    not due (delivered, given up, already being attempted, its endpoint removed or disabled). Its next attempt
    moves to ``busy_until``, so a sender that dies mid-request leaves it due again after that."""
    number = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.next_attempt_at <= now, _enabled_endpoint())
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=busy_until, queued_at=None)
        .returning(WebhookDelivery.attempts)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if number is None:
        return None
    return session.execute(
        select(
            WebhookDelivery.attempts,
            WebhookDelivery.payload,
            WebhookEndpoint.url,
            WebhookEndpoint.secret,
            WebhookEndpoint.id,
        )
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one()


def settle(session: Session, delivery_id: uuid.UUID, number: int, **values) -> bool:
    """Record the outcome of attempt ``number``, unless a later attempt has started meanwhile."""
    return (
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == number)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def due(session: Session, now: datetime, requeue_before: datetime, limit: int) -> list[uuid.UUID]:
    """Deliveries due now with no message sent for them since ``requeue_before``; marked as sent."""
    ids = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.next_attempt_at <= now,
            _enabled_endpoint(),
            or_(WebhookDelivery.queued_at.is_(None), WebhookDelivery.queued_at < requeue_before),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(queued_at=now)
            .execution_options(synchronize_session=False)
        )
    return list(ids)


def endpoint_delivered(session: Session, endpoint_id: uuid.UUID) -> None:
    """A delivery got through: the endpoint's run of failures is over."""
    session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.failed_in_a_row != 0)
        .values(failed_in_a_row=0)
        .execution_options(synchronize_session=False)
    )


def endpoint_gave_up(session: Session, endpoint_id: uuid.UUID, disable_after: int, now: datetime, last: str) -> bool:
    """A delivery was given up: count it, and disable the endpoint when the run reaches
    ``disable_after`` (0: never). True when this call disabled it."""
    count = session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(failed_in_a_row=WebhookEndpoint.failed_in_a_row + 1)
        .returning(WebhookEndpoint.failed_in_a_row)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if count is None or disable_after == 0 or count < disable_after:
        return False
    reason = f"disabled after {count} deliveries in a row were given up; the last attempt: {last}"
    return (
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.disabled_at.is_(None))
            .values(disabled_at=now, disabled_reason=reason)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
