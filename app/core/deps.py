"""FastAPI dependencies: the request's database session and its tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.core.db import get_sessionmaker
from app.core.problems import Problem
from app.core.security import tenant_for_key
from app.tenants.models import Tenant


def get_session() -> Iterator[Session]:
    """One session per request; the route's unit of work commits explicitly."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def current_tenant(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    def unauthorized(detail: str) -> Problem:
        p = Problem(401, "Unauthorized", detail)
        p.headers = {"WWW-Authenticate": "Bearer"}
        return p

    if not authorization or not authorization.lower().startswith("bearer "):
        raise unauthorized("send 'Authorization: Bearer <key>'; create a key with `candor keys create --tenant NAME`")
    tenant = tenant_for_key(session, authorization[7:].strip())
    if tenant is None:
        raise unauthorized("unknown or revoked API key")
    return tenant


TenantDep = Annotated[Tenant, Depends(current_tenant)]
