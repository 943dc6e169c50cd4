"""Label Studio's ML backend protocol per classifier: add
`https://CANDOR/v1/labelstudio/<classifier id>` as a model in a Label Studio project (basic auth,
the API key as the password) and it answers /health, /setup, /predict, /webhook and /metrics."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from app.core.deps import SessionDep
from app.core.problems import Problem
from app.labelstudio import service
from app.labelstudio.schemas import (
    HealthResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    WebhookResponse,
)

router = APIRouter(prefix="/v1/labelstudio/{classifier_id}", tags=["labelstudio"])
PROBLEM = {"content": {"application/problem+json": {}}}
ERRORS = {401: PROBLEM, 404: PROBLEM, 422: PROBLEM}
Authorization = Annotated[
    str | None,
    Header(description="basic auth with the Candor API key as the password (any user), or `Bearer <key>`"),
]


async def _body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError) as exc:
        raise Problem(422, "Invalid request", "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise Problem(422, "Invalid request", "the body is not a JSON object")
    return body


def _validate(model, body: dict):
    try:
        return model.model_validate(body)
    except ValueError as exc:
        errors = getattr(exc, "errors", lambda: [])()
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        where = ".".join(str(x) for x in ("body", *first["loc"]))
        raise Problem(422, "Validation failed", f"{where}: {first['msg']}") from exc


@router.get("/health", response_model=HealthResponse, responses=ERRORS)
def health(classifier_id: uuid.UUID, session: SessionDep, authorization: Authorization = None):
    """Label Studio's connection check: UP with the classifier's version."""
    tenant = service.authenticate(session, authorization)
    return HealthResponse(model_version=service.model_version(session, tenant, classifier_id))


@router.get("/metrics", responses=ERRORS)
def metrics(classifier_id: uuid.UUID, session: SessionDep, authorization: Authorization = None) -> dict:
    """label-studio-ml-backend's metrics route: an empty object."""
    tenant = service.authenticate(session, authorization)
    service.model_version(session, tenant, classifier_id)
    return {}


@router.post("/setup", response_model=SetupResponse, responses=ERRORS)
async def setup(classifier_id: uuid.UUID, request: Request, session: SessionDep, authorization: Authorization = None):
    """Connect a project: its labeling config's <Choices> must be classes of the classifier; the
    connection's extra params `{"url", "token", "train"}` tell where Label Studio is, the token that
    reads its task images and whether annotation webhooks start a new job."""
    body = _validate(SetupRequest, await _body(request))
    tenant = await run_in_threadpool(service.authenticate, session, authorization)
    version = await run_in_threadpool(service.setup, session, tenant, classifier_id, body)
    return SetupResponse(model_version=version)


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(classifier_id: uuid.UUID, request: Request, session: SessionDep, authorization: Authorization = None):
    """Pre-annotate tasks: each task's image (fetched by its URL) classified among the labeling
    config's choices; one `{result, score, model_version}` per task."""
    body = _validate(PredictRequest, await _body(request))
    tenant = await run_in_threadpool(service.authenticate, session, authorization)
    return await run_in_threadpool(service.predict, session, tenant, classifier_id, body)


@router.post("/webhook", status_code=201, response_model=WebhookResponse, responses=ERRORS)
async def webhook(classifier_id: uuid.UUID, request: Request, session: SessionDep, authorization: Authorization = None):
    """Label Studio's events: ANNOTATION_CREATED, ANNOTATION_UPDATED and START_TRAINING start a new
    job on the classifier's dataset when the project's connection has `train` on."""
    body = await _body(request)
    tenant = await run_in_threadpool(service.authenticate, session, authorization)
    return await run_in_threadpool(service.webhook, session, tenant, classifier_id, body)
