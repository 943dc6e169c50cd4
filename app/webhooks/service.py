"""Webhook endpoints of a tenant: register (the secret shown once), list, remove, and their deliveries."""

from __future__ import annotations

import base64
import json
import secrets
import uuid

from sqlalchemy.orm import Session

from app.core import pagination
from app.core.pagination import Page
from app.core.problems import TYPE_BASE, Problem, not_found
from app.core.security import TenantRef
from app.core.settings import get_settings
from app.webhooks import repository as repo
from app.webhooks.addresses import RefusedAddress, check_url
from app.webhooks.models import WebhookEndpoint
from app.webhooks.schemas import AttemptOut, DeliveryOut, WebhookCreate

MAX_ENDPOINTS = 20  # per tenant


def new_secret() -> str:
    """``whsec_`` and 32 random bytes in base64, as Standard Webhooks has it."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def create_endpoint(session: Session, tenant: TenantRef, body: WebhookCreate) -> WebhookEndpoint:
    url = str(body.url)
    try:
        check_url(url, get_settings().webhook_allow_private)
    except RefusedAddress as exc:
        raise Problem(
            422,
            "Validation failed",
            f"url: {exc}",
            TYPE_BASE + "validation-failed",
            errors=[{"loc": ["body", "url"], "msg": str(exc), "type": "webhook_url_refused"}],
        ) from exc
    if repo.count_endpoints(session, tenant.id) >= MAX_ENDPOINTS:
        raise Problem(409, "Too many webhooks", f"a tenant has at most {MAX_ENDPOINTS} webhooks; delete one first")
    endpoint = WebhookEndpoint(tenant_id=tenant.id, url=url, events=body.events, secret=new_secret())
    session.add(endpoint)
    session.flush()
    return endpoint


def require_endpoint(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = repo.get_endpoint(session, tenant.id, endpoint_id)
    if endpoint is None:
        raise not_found("webhook", endpoint_id)
    return endpoint


def delete_endpoint(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID) -> None:
    if not repo.delete_endpoint(session, tenant.id, endpoint_id):
        raise not_found("webhook", endpoint_id)


def deliveries(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID, cursor: str | None, limit: int) -> Page:
    """A page of an endpoint's deliveries, newest first, each with its attempts."""
    endpoint = require_endpoint(session, tenant, endpoint_id)
    rows = repo.list_deliveries(session, endpoint.id, cursor, limit)
    attempts = repo.attempts_of(session, [r.id for r in rows[:limit]])

    def out(row) -> DeliveryOut:
        return DeliveryOut(
            id=row.id,
            event=row.event,
            status=row.status,
            attempt_count=row.attempts,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            finished_at=row.finished_at,
            payload=json.loads(row.payload),
            attempts=[AttemptOut.model_validate(a) for a in attempts[row.id]],
        )

    return pagination.page(rows, limit, pagination.time_id_cursor, out)


def enable_endpoint(session: Session, tenant: TenantRef, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    if not repo.enable_endpoint(session, tenant.id, endpoint_id):
        raise not_found("webhook", endpoint_id)
    session.expire_all()
    return require_endpoint(session, tenant, endpoint_id)
