from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.core.db import get_engine
from app.core.problems import Problem
from app.core.settings import get_settings

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class ReadyChecks(BaseModel):
    database: Literal["ok"]
    broker: Literal["ok", "embedded"] = Field(description="'embedded' when jobs run in the API process")


class Ready(BaseModel):
    status: Literal["ready"]
    checks: ReadyChecks


@router.get("/healthz", response_model=Health)
def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses={503: {"content": {"application/problem+json": {}}}})
def readyz():
    """Readiness: the database and (unless embedded) the broker answer; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    settings = get_settings()
    if settings.embedded:
        checks["broker"] = "embedded"
    else:
        try:
            import redis

            redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2, socket_timeout=2).ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {type(exc).__name__}"
    if any(v.startswith("unreachable") for v in checks.values()):
        problem = Problem(503, "Service Unavailable", "a dependency is unreachable", checks=checks)
        problem.headers = {"Retry-After": str(settings.db_retry_after_seconds)}
        raise problem
    return {"status": "ready", "checks": checks}
