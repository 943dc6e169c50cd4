"""API keys: prefixed random tokens, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tenants.models import ApiKey, Tenant

KEY_PREFIX = "cnd_"


@dataclass(frozen=True)
class TenantRef:
    """Who a request acts for; every query the request makes is scoped to ``id``."""

    id: uuid.UUID
    name: str
    key_id: uuid.UUID | None = None  # the API key the request came with (reviews name their reviewer by it)
    key_prefix: str | None = None

    @property
    def reviewer(self) -> str:
        """Who made a decision, as the audit trail shows it: ``<tenant>/<key prefix>``."""
        return f"{self.name}/{self.key_prefix}" if self.key_prefix else self.name


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Create the tenant if needed and a new key for it; returns the plaintext key (shown once)."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, prefix=key[:12], key_hash=hash_key(key)))
    session.flush()
    return tenant, key


class _KeyCache:
    """Recently verified keys (by hash) for ``ttl`` seconds, so a hot path such as /predict does not
    query the database on every request; a revoked key stops working within ``ttl``."""

    def __init__(self) -> None:
        self._data: dict[bytes, tuple[float, TenantRef]] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> TenantRef | None:
        with self._lock:
            hit = self._data.get(digest)
            if hit is None or hit[0] < time.monotonic():
                self._data.pop(digest, None)
                return None
            return hit[1]

    def put(self, digest: bytes, tenant: TenantRef, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            if len(self._data) > 10_000:
                self._data.clear()
            self._data[digest] = (time.monotonic() + ttl, tenant)


key_cache = _KeyCache()


def tenant_for_key(session: Session, key: str, ttl: float = 0.0) -> TenantRef | None:
    """The tenant of a valid, unrevoked key, remembered for ``ttl`` seconds."""
    if not key.startswith(KEY_PREFIX):
        return None
    digest = hash_key(key)
    cached = key_cache.get(digest)
    if cached is not None:
        return cached
    row = session.execute(
        select(Tenant.id, Tenant.name, ApiKey.id, ApiKey.prefix)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    tenant = TenantRef(id=row[0], name=row[1], key_id=row[2], key_prefix=row[3])
    key_cache.put(digest, tenant, ttl)
    return tenant
