"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): replay the stored response for the
same key and request, 422 for the same key with another request, 409 while the first is in flight."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.core.problems import Problem
from app.core.security import TenantRef
from app.core.settings import get_settings
from app.tenants.models import IdempotencyRecord


def fingerprint(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()


def replay(session: Session, tenant: TenantRef, key: str | None, route: str, fp: str) -> JSONResponse | None:
    if not key:
        return None
    if len(key) > 255:
        raise Problem(400, "Bad Request", "Idempotency-Key is longer than 255 characters")
    ttl = timedelta(hours=get_settings().idempotency_ttl_hours)
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - ttl))
    rec = session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.tenant_id == tenant.id, IdempotencyRecord.key == key, IdempotencyRecord.route == route
        )
    )
    if rec is None:
        return None
    if rec.fingerprint != fp:
        raise Problem(422, "Idempotency key reused", f"Idempotency-Key {key!r} was used for a different request")
    headers = dict(rec.headers or {}) | {"Idempotent-Replayed": "true"}
    return JSONResponse(rec.response, status_code=rec.status_code, headers=headers)


def remember(
    session: Session,
    tenant: TenantRef,
    key: str | None,
    route: str,
    fp: str,
    status: int,
    body: dict,
    headers: dict | None = None,
) -> None:
    """Store the response in the same transaction as the work it describes."""
    if key:
        session.add(
            IdempotencyRecord(
                tenant_id=tenant.id,
                key=key,
                route=route,
                fingerprint=fp,
                status_code=status,
                response=body,
                headers=headers or {},
            )
        )


def commit_or_conflict(session: Session, key: str | None) -> None:
    """Commit; a concurrent request that stored the same key first wins, this one answers 409."""
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        if key:
            raise Problem(
                409, "Conflict", f"a request with Idempotency-Key {key!r} is already being processed"
            ) from exc
        raise
