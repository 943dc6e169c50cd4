"""RFC 9457 problem details for every error, validation errors included."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import psycopg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://candor.dev/problems/"
log = logging.getLogger("candor.api")


class Problem(Exception):
    """Raise to answer with application/problem+json."""

    def __init__(self, status: int, title: str, detail: str | None = None, type_: str | None = None, **extra: Any):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_ or TYPE_BASE + title.lower().replace(" ", "-")
        self.extra = extra
        self.headers: dict[str, str] = {}


def not_found(what: str, ident: object) -> Problem:
    return Problem(404, "Not found", f"{what} {ident} does not exist")


def problem_response(
    status: int,
    title: str,
    detail: str | None,
    instance: str,
    type_: str | None = None,
    headers: dict | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": type_ or "about:blank", "title": title, "status": status, "instance": instance}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


class ProblemResponse(JSONResponse):
    """problem+json with non-ASCII written as JSON escapes: the same JSON, and a lone surrogate
    echoed from a request (in a field name, say) stays encodable instead of failing the answer."""

    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return problem_response(
            exc.status, exc.title, exc.detail, request.url.path, exc.type, exc.headers or None, **exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        title = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem_response(exc.status_code, title, detail, request.url.path, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return problem_response(
            422, "Validation failed", detail, request.url.path, TYPE_BASE + "validation-failed", errors=errors
        )

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    @app.exception_handler(sqlalchemy.exc.InterfaceError)
    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    @app.exception_handler(sqlalchemy.exc.DisconnectionError)
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg.InterfaceError)
    async def _database_unavailable(request: Request, exc: Exception):
        from app.core.settings import get_settings

        retry = get_settings().db_retry_after_seconds
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return problem_response(
            503,
            "Service Unavailable",
            f"the database is unavailable; retry in {retry} seconds",
            request.url.path,
            TYPE_BASE + "database-unavailable",
            headers={"Retry-After": str(retry)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - defensive
        return problem_response(500, "Internal Server Error", None, request.url.path)
