"""Label Studio's ML backend protocol per classifier: add
`https://CANDOR/v1/labelstudio/<classifier id>` as a model in a Label Studio project (basic auth,
the API key as the password) and it answers /health, /setup, /predict, /webhook and /metrics."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from app.core.deps import SessionDep, bearer
from app.core.problems import Problem
from app.core.security import TenantRef
from app.labelstudio import service
from app.labelstudio.schemas import (
    LabelStudioHealth,
    LabelStudioMetrics,
    LabelStudioPredictions,
    LabelStudioPredictRequest,
    LabelStudioSetup,
    LabelStudioSetupAnswer,
    LabelStudioWebhookAnswer,
)
from app.openapi import register

router = APIRouter(prefix="/v1/labelstudio/{classifier_id}", tags=["labelstudio"])
PROBLEM = {"content": {"application/problem+json": {}}}
ERRORS = {404: PROBLEM, 422: PROBLEM}


async def labelstudio_tenant(session: SessionDep, authorization: Annotated[str | None, Depends(bearer)]) -> TenantRef:
    """The tenant of the API key Label Studio sends: the basic-auth password of its ML backend
    connection (any user name), or a bearer key."""
    return await run_in_threadpool(service.authenticate, session, authorization)


TenantDep = Annotated[TenantRef, Depends(labelstudio_tenant)]


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


@router.get("/health", response_model=LabelStudioHealth, responses=ERRORS)
def labelstudio_health(classifier_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Label Studio's connection check: UP with the classifier's version."""
    return LabelStudioHealth(model_version=service.model_version(session, tenant, classifier_id))


@router.get("/metrics", response_model=LabelStudioMetrics, responses=ERRORS)
def labelstudio_metrics(classifier_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """label-studio-ml-backend's metrics route: an empty object."""
    service.model_version(session, tenant, classifier_id)
    return LabelStudioMetrics()


def _body_doc(model) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": register(model)}}}}


@router.post(
    "/setup", response_model=LabelStudioSetupAnswer, responses=ERRORS, openapi_extra=_body_doc(LabelStudioSetup)
)
async def labelstudio_setup(classifier_id: uuid.UUID, request: Request, session: SessionDep, tenant: TenantDep):
    """Connect a project: its labeling config's <Choices> must be classes of the classifier; the
    connection's extra params `{"url", "token", "train"}` tell where Label Studio is, the token that
    reads its task images and whether annotation webhooks start a new job."""
    body = _validate(LabelStudioSetup, await _body(request))
    version = await run_in_threadpool(service.setup, session, tenant, classifier_id, body)
    return LabelStudioSetupAnswer(model_version=version)


@router.post(
    "/predict",
    response_model=LabelStudioPredictions,
    responses={**ERRORS, 413: PROBLEM},
    openapi_extra=_body_doc(LabelStudioPredictRequest),
)
async def labelstudio_predict(classifier_id: uuid.UUID, request: Request, session: SessionDep, tenant: TenantDep):
    """Pre-annotate tasks: each task's image (fetched by its URL) classified among the labeling
    config's choices; one `{result, score, model_version}` per task."""
    body = _validate(LabelStudioPredictRequest, await _body(request))
    return await run_in_threadpool(service.predict, session, tenant, classifier_id, body)


@router.post(
    "/webhook",
    status_code=201,
    response_model=LabelStudioWebhookAnswer,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object", "description": "a Label Studio event"}}},
        }
    },
)
async def labelstudio_webhook(classifier_id: uuid.UUID, request: Request, session: SessionDep, tenant: TenantDep):
    """Label Studio's events: ANNOTATION_CREATED, ANNOTATION_UPDATED and START_TRAINING start a new
    job on the classifier's dataset when the project's connection has `train` on; an annotation
    event's vote enters the dataset first (the task's item, or a new item), as `item` says."""
    body = await _body(request)
    return await run_in_threadpool(service.webhook, session, tenant, classifier_id, body)
