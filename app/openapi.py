"""The OpenAPI document as Candor publishes it.

FastAPI writes the operations from the routes; this module completes the contract in one place:

- one ``Problem`` schema (RFC 9457 with Candor's ``errors``/``items``/``checks`` extensions) on
  every error answer, as ``application/problem+json``, FastAPI's ``HTTPValidationError`` included;
- the error answers every operation can give whatever its route: 401 with ``WWW-Authenticate`` on
  authenticated operations, 422 where there is a parameter or a body, 400 for a bad cursor or a
  long Idempotency-Key, 409/422 for a key in flight or reused, 413/408 for a body over the limit
  or one that stalls (the request guard), 503 with ``Retry-After`` when the database is down;
- the ``Idempotent-Replayed`` header on the answers of operations that take an Idempotency-Key;
- models used only by hand-written media types (label rows, the multipart predict body).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from app.datasets.schemas import ItemOutcome

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
REF_TEMPLATE = "#/components/schemas/{model}"
IDEMPOTENCY_KEY = "Idempotency-Key"


class FieldError(BaseModel):
    """One invalid field of a request."""

    loc: list[str] = Field(description="where: 'body', 'query', 'path' or 'header', then the field's path")
    msg: str = Field(description="what is wrong with it")
    type: str | None = Field(None, description="the kind of error, e.g. 'missing', 'int_parsing'")


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details), sent as `application/problem+json`."""

    model_config = ConfigDict(extra="allow", title="Problem")
    type: str = Field("about:blank", description="a URI naming the kind of problem")
    title: str = Field(description="a short summary of the kind of problem")
    status: int = Field(description="the HTTP status code")
    detail: str | None = Field(None, description="what went wrong with this request, in plain words")
    instance: str | None = Field(None, description="the path of the request")
    errors: list[FieldError] | None = Field(None, description="a request that failed validation: every invalid field")
    items: list[ItemOutcome] | None = Field(
        None, description="a rejected upload: every item's outcome, the rejected ones with their reason"
    )
    checks: dict[str, str] | None = Field(None, description="/readyz: each dependency and its state")


WHY = {
    400: "Bad request: a damaged or foreign cursor, or an Idempotency-Key over 255 characters",
    401: "No API key, or an unknown or revoked one",
    404: "No such resource for this tenant",
    408: "The request body stalled",
    409: "Conflict with the resource's state, or a request with the same Idempotency-Key in flight",
    413: "The request body or the batch is over the limit",
    415: "Unsupported Content-Type",
    422: "The request is invalid; `errors` or `items` name what is wrong",
    503: "The database (or, for /readyz, a dependency) is unavailable; retry after `Retry-After` seconds",
}
HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "`Bearer`: send `Authorization: Bearer <key>`",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": "seconds to wait before retrying",
            "required": True,
            "schema": {"type": "integer"},
        }
    },
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the same Idempotency-Key",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    }
}
# models that only hand-written media types refer to
EXTRA_MODELS: list[type[BaseModel]] = []


def register(model: type[BaseModel]) -> dict[str, str]:
    """Publish ``model`` under components/schemas; returns a reference to it."""
    if model not in EXTRA_MODELS:
        EXTRA_MODELS.append(model)
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def _add_schema(components: dict, model: type[BaseModel], name: str | None = None) -> None:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE)
    for sub, body in schema.pop("$defs", {}).items():
        components.setdefault(sub, body)
    components[name or model.__name__] = schema


def _statuses(op: dict) -> set[int]:
    """The error statuses an operation can answer whatever its route does."""
    params = op.get("parameters", [])
    names = {p["name"] for p in params}
    codes = set()
    if op.get("security"):
        codes.add(401)
    if params or "requestBody" in op:
        codes.add(422)
    if "cursor" in names:
        codes.add(400)
    if IDEMPOTENCY_KEY in names:
        codes |= {400, 409, 422}
    if "requestBody" in op:
        codes |= {408, 413}
    if op.get("operationId") != "healthz":
        codes.add(503)
    return codes


def _refine_operation(op: dict) -> None:
    responses = op.setdefault("responses", {})
    for code in _statuses(op):
        responses.setdefault(str(code), {})
    for param in op.get("parameters", []):
        if param["name"] == IDEMPOTENCY_KEY:
            param["description"] = (
                "any unique string (at most 255 characters): a retry with the same key and body gets the stored "
                "answer instead of doing the work twice, for 24 hours (CANDOR_IDEMPOTENCY_TTL_HOURS)"
            )
    for code, response in responses.items():
        if code.isdigit() and int(code) >= 400:
            status = int(code)
            if response.get("description") in (None, "", "Additional Response", "Validation Error"):
                response["description"] = WHY.get(status, HTTPStatus(status).phrase)
            response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
            if status in HEADERS:
                response["headers"] = HEADERS[status] | response.get("headers", {})
        elif code.startswith("2") and any(p["name"] == IDEMPOTENCY_KEY for p in op.get("parameters", [])):
            response["headers"] = response.get("headers", {}) | REPLAYED
    op["responses"] = dict(sorted(responses.items()))


def refine(doc: dict) -> dict:
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _add_schema(components, Problem, "Problem")
    for model in EXTRA_MODELS:
        _add_schema(components, model)
    for operations in doc.get("paths", {}).values():
        for op in operations.values():
            _refine_operation(op)
    doc["components"]["schemas"] = dict(sorted(components.items()))
    return doc


def install(app: FastAPI) -> None:
    """Serve the refined document at /openapi.json (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = refine(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
