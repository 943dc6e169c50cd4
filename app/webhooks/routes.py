from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from app.core import idempotency, pagination
from app.core.deps import SessionDep, TenantDep
from app.webhooks import repository as repo
from app.webhooks import service
from app.webhooks.schemas import DeliveryPage, WebhookCreate, WebhookCreated, WebhookOut, WebhookPage

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
PROBLEM = {"content": {"application/problem+json": {}}}
ROUTE = "POST /v1/webhooks"


LOCATION = {"Location": {"description": "the webhook's path", "required": True, "schema": {"type": "string"}}}


@router.post(
    "",
    status_code=201,
    response_model=WebhookCreated,
    responses={201: {"headers": LOCATION}, 409: PROBLEM, 422: PROBLEM},
)
def create_webhook(
    body: WebhookCreate,
    session: SessionDep,
    tenant: TenantDep,
    key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
):
    """Send `events` to `url`, signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`). The answer holds the signing `secret`; no other answer shows it. A URL
    that resolves to a link-local, metadata, loopback or private address is refused (422)."""
    fp = idempotency.fingerprint(ROUTE, body.model_dump_json())
    replayed = idempotency.replay(session, tenant, key, ROUTE, fp)
    if replayed is not None:
        return replayed
    endpoint = service.create_endpoint(session, tenant, body)
    out = WebhookCreated.model_validate(endpoint).model_dump(mode="json")
    headers = {"Location": f"/v1/webhooks/{endpoint.id}"}
    idempotency.remember(session, tenant, key, ROUTE, fp, 201, out, headers)
    idempotency.commit_or_conflict(session, key)
    return JSONResponse(out, status_code=201, headers=headers)


@router.get("", response_model=WebhookPage, responses={400: PROBLEM})
def list_webhooks(
    session: SessionDep, tenant: TenantDep, limit: pagination.Limit = 100, cursor: pagination.Cursor = None
):
    """The tenant's webhooks, newest first, without their secrets. Keyset-paginated: follow
    `next_cursor` until it is null."""
    rows = repo.list_endpoints(session, tenant.id, cursor, limit)
    return pagination.page(rows, limit, pagination.time_id_cursor, WebhookOut.model_validate)


@router.get("/{webhook_id}", response_model=WebhookOut, responses={404: PROBLEM})
def get_webhook(webhook_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    return service.require_endpoint(session, tenant, webhook_id)


@router.delete("/{webhook_id}", status_code=204, responses={404: PROBLEM})
def delete_webhook(webhook_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Stop sending to this webhook; its deliveries, pending ones included, are removed with it."""
    service.delete_endpoint(session, tenant, webhook_id)
    session.commit()
    return Response(status_code=204)


@router.post("/{webhook_id}/enable", response_model=WebhookOut, responses={404: PROBLEM})
def enable_webhook(webhook_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Turn a webhook back on after Candor disabled it (`enabled: false`, `disabled_reason`): its
    count of failures starts again at zero, its pending deliveries resume, new events reach it.
    Answers the webhook; enabling an enabled webhook changes nothing."""
    endpoint = service.enable_endpoint(session, tenant, webhook_id)
    out = WebhookOut.model_validate(endpoint).model_dump(mode="json")
    session.commit()
    return JSONResponse(out)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, responses={400: PROBLEM, 404: PROBLEM})
def list_webhook_deliveries(
    webhook_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    limit: pagination.Limit = 100,
    cursor: pagination.Cursor = None,
):
    """The webhook's deliveries, newest first: event, payload, status (pending, delivered, failed),
    when the next attempt is due, and every attempt with its status code, the start of the
    receiver's answer or the error. Keyset-paginated."""
    return service.deliveries(session, tenant, webhook_id, cursor, limit)
