"""API keys: prefixed random tokens, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.tenants.models import ApiKey, Tenant

KEY_PREFIX = "cnd_"


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


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    if not key.startswith(KEY_PREFIX):
        return None
    row = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    return row
