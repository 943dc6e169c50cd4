"""FastAPI dependencies: the request's database session and its tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.core.db import get_sessionmaker
from app.core.problems import Problem
from app.core.security import TenantRef, hash_key, key_cache, tenant_for_key
from app.core.settings import get_settings


def get_session() -> Iterator[Session]:
    """One session per request; the route's unit of work commits explicitly. A session opens no
    connection until its first query."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


class _BearerKey(HTTPBearer):
    """Declares the bearer scheme in the OpenAPI document; hands the raw Authorization header to
    ``current_tenant``, which answers 401 problem+json itself."""

    async def __call__(self, request: Request) -> str | None:  # type: ignore[override]
        return request.headers.get("authorization")


bearer = _BearerKey(
    scheme_name="bearer",
    bearerFormat="cnd_...",
    description="an API key: `Authorization: Bearer <key>`; create one with `candor keys create --tenant NAME`",
    auto_error=False,
)


async def current_tenant(session: SessionDep, authorization: Annotated[str | None, Depends(bearer)]) -> TenantRef:
    def unauthorized(detail: str) -> Problem:
        p = Problem(401, "Unauthorized", detail)
        p.headers = {"WWW-Authenticate": "Bearer"}
        return p

    if not authorization or not authorization.lower().startswith("bearer "):
        raise unauthorized("send 'Authorization: Bearer <key>'; create a key with `candor keys create --tenant NAME`")
    key = authorization[7:].strip()
    tenant = key_cache.get(hash_key(key))
    if tenant is None:
        tenant = await run_in_threadpool(_lookup, session, key, get_settings().auth_cache_seconds)
    if tenant is None:
        raise unauthorized("unknown or revoked API key")
    return tenant


def _lookup(session: Session, key: str, ttl: float) -> TenantRef | None:
    """The key's tenant, with the lookup's transaction ended at once: the connection goes back to
    the pool before the route runs, so a route that streams a request body (or a response) holds
    no connection, let alone one idle in a transaction, while the client takes its time."""
    try:
        tenant = tenant_for_key(session, key, ttl)
    except BaseException:
        session.rollback()
        raise
    session.commit()
    return tenant


TenantDep = Annotated[TenantRef, Depends(current_tenant)]
