"""The web UI's sign-in: an API key becomes a signed session cookie; forms carry CSRF tokens.

The cookie (``candor_session``: HttpOnly, SameSite=Strict, Secure when ``CANDOR_UI_COOKIE_SECURE``)
holds ``base64url(json) . HMAC-SHA256`` of the API key's id, its tenant, the expiry and a random
nonce; never the key itself. The nonce is also a sign-in row (``ui_signins``). Each request checks
the signature, the expiry, that the sign-in was not signed out and that the key is still unrevoked
in the database: revoking a key ends its sessions at once, and signing out ends that session for
any copy of the cookie too. The signing key is ``CANDOR_UI_SECRET``, else one made at random on
first use and kept in the database (``ui_secrets``), so every API process accepts the others'
cookies and a restart keeps people signed in. A form's CSRF token
is the HMAC of the session's nonce: a page of another site can neither read it nor (SameSite)
send the cookie. The sign-in form itself is protected the same way by a short-lived pre-session
cookie holding only a nonce.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db import session_scope, utcnow
from app.core.security import TenantRef
from app.core.settings import get_settings
from app.tenants.models import ApiKey, Tenant
from app.ui.models import UiSecret, UiSignin

COOKIE = "candor_session"
PRE_COOKIE = "candor_signin"


SECRET_NAME = "ui-signing"


@lru_cache
def _secret() -> bytes:
    configured = get_settings().ui_secret
    return configured.encode() if configured else _shared_secret()


def _shared_secret() -> bytes:
    """The database's signing key, made by the first process that asks (a race is lost gracefully)."""
    with session_scope() as session:
        value = session.scalar(select(UiSecret.value).where(UiSecret.name == SECRET_NAME))
        if value is not None:
            return value
        try:
            with session.begin_nested():
                session.add(UiSecret(name=SECRET_NAME, value=secrets.token_bytes(32)))
        except IntegrityError:  # another process made it first
            pass
        return session.scalar(select(UiSecret.value).where(UiSecret.name == SECRET_NAME))


def _mac(*parts: str) -> str:
    return hmac.new(_secret(), "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class UiSession:
    tenant: TenantRef
    nonce: str

    @property
    def csrf(self) -> str:
        return _mac("csrf", self.nonce)

    def check_csrf(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, token)


def issue(session: Session, tenant: TenantRef) -> str:
    """A signed session token for the tenant's key, recorded as a sign-in (expired ones are dropped)."""
    hours = get_settings().ui_session_hours
    payload = {"k": str(tenant.key_id), "t": str(tenant.id), "e": int(time.time() + hours * 3600)}
    payload["n"] = secrets.token_urlsafe(16)
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    token = f"{body}.{_mac('session', body)}"  # signed before this session writes (the key may be made first)
    session.execute(delete(UiSignin).where(UiSignin.expires_at < utcnow()))
    session.add(
        UiSignin(nonce=payload["n"], key_id=tenant.key_id, expires_at=datetime.fromtimestamp(payload["e"], UTC))
    )
    return token


def read(session: Session, token: str | None) -> UiSession | None:
    """The session of a cookie value: None when it is missing, forged, expired, signed out or its key
    revoked."""
    if not token or len(token) > 1000 or "." not in token:
        return None
    body, _, mac = token.rpartition(".")
    if not hmac.compare_digest(_mac("session", body), mac):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        key_id, tenant_id = uuid.UUID(payload["k"]), uuid.UUID(payload["t"])
        expires, nonce = int(payload["e"]), str(payload["n"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    if expires < time.time():
        return None
    row = session.execute(
        select(Tenant.id, Tenant.name, ApiKey.id, ApiKey.prefix)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .join(UiSignin, UiSignin.key_id == ApiKey.id)
        .where(ApiKey.id == key_id, Tenant.id == tenant_id, ApiKey.revoked_at.is_(None))
        .where(UiSignin.nonce == nonce, UiSignin.signed_out_at.is_(None))
    ).one_or_none()
    if row is None:
        return None
    return UiSession(TenantRef(id=row[0], name=row[1], key_id=row[2], key_prefix=row[3]), nonce)


def sign_out(session: Session, ui: UiSession) -> None:
    """End the sign-in for every copy of its cookie."""
    session.execute(update(UiSignin).where(UiSignin.nonce == ui.nonce).values(signed_out_at=utcnow()))


def signin_token(nonce: str) -> str:
    """The sign-in form's CSRF token for the pre-session nonce."""
    return _mac("signin", nonce)


def check_signin(nonce: str | None, token: str | None) -> bool:
    return bool(nonce) and bool(token) and hmac.compare_digest(signin_token(nonce), token)


def cookie_args(max_age: int | None) -> dict:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": get_settings().ui_cookie_secure,
        "path": "/ui",
        "max_age": max_age,
    }
