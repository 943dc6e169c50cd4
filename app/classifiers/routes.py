from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.classifiers import service
from app.classifiers.schemas import (
    ClassifierOut,
    ClassifierPage,
    ClassifierSummary,
    PredictForm,
    PredictRequest,
    PredictResponse,
)
from app.core import pagination
from app.core.deps import SessionDep, TenantDep
from app.core.problems import Problem
from app.openapi import register

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"])
MAX_IMAGES = 256
PROBLEM = {"content": {"application/problem+json": {}}}


@router.get("", response_model=ClassifierPage, responses={400: PROBLEM})
def list_classifiers(
    session: SessionDep, tenant: TenantDep, limit: pagination.Limit = 100, cursor: pagination.Cursor = None
):
    """The tenant's classifiers, newest first, as summaries (the class count, not the class list or
    metrics; the detail route has them). Keyset-paginated: follow `next_cursor` until it is null."""
    rows = service.list_classifiers(session, tenant, cursor, limit)
    return pagination.page(rows, limit, pagination.time_id_cursor, ClassifierSummary.model_validate)


@router.get("/{classifier_id}", response_model=ClassifierOut, responses={404: PROBLEM})
def get_classifier(classifier_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    return service.require_classifier(session, tenant, classifier_id)


@router.delete("/{classifier_id}", status_code=204, responses={404: PROBLEM})
def delete_classifier(classifier_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Delete the classifier: /predict and the artifact answer 404 from now on. Its job and labels
    stay (the job's `classifier_id` becomes null)."""
    service.delete_classifier(session, tenant, classifier_id)
    session.commit()
    return Response(status_code=204)


@router.get(
    "/{classifier_id}/artifact",
    response_class=Response,
    responses={
        200: {
            "description": "a ZIP of `classifier.safetensors` and `classifier.json`: unzipped, the folder "
            "`candor predict FOLDER IMAGE` loads (the same files `candor clean` writes)",
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "Content-Disposition": {
                    "description": "`attachment; filename=classifier-<id>.zip`",
                    "schema": {"type": "string"},
                },
                "ETag": {"description": "the classifier's version", "schema": {"type": "string"}},
            },
        },
        404: PROBLEM,
    },
)
def get_classifier_artifact(classifier_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Download the classifier to predict offline: safetensors and JSON, never pickle."""
    version, data = service.artifact_zip(session, tenant, classifier_id)
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="classifier-{classifier_id}.zip"',
            "ETag": f'"{version}"',
        },
    )


@router.post(
    "/{classifier_id}/predict",
    response_model=PredictResponse,
    responses={
        404: PROBLEM,
        415: PROBLEM,
        422: PROBLEM,
        200: {
            "headers": {
                "Server-Timing": {
                    "description": "`predict;dur=MS, handler;dur=MS`: decoding and classifying, and the whole handler",
                    "schema": {"type": "string"},
                }
            }
        },
        413: PROBLEM,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": register(PredictRequest)},
                "multipart/form-data": {"schema": register(PredictForm)},
            },
        }
    },
)
async def predict(
    classifier_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="overrides the body's `top_k` (default 5)")] = None,
    candidates: Annotated[
        str | None,
        Query(
            deprecated=True,
            description="deprecated: comma-separated classes for a multipart body; send `candidates` parts instead",
        ),
    ] = None,
):
    """Classify images: JSON `{images: [base64], top_k, candidates}` (PredictRequest) or multipart
    `files`, `top_k` and `candidates` parts (PredictForm). `candidates` is an array in both. One
    image forward and a matmul per image on a warm backbone. The
    `Server-Timing` header gives the time spent decoding and classifying (`predict`) and in the
    handler as a whole (`handler`), in milliseconds."""
    started = time.perf_counter()
    blobs, k, cands = await _parse(request, top_k, candidates)
    t0 = time.perf_counter()
    # decoding and the forward pass run off the event loop, so other requests keep being served
    result = await run_in_threadpool(service.predict, session, tenant, classifier_id, blobs, k, cands)
    done = time.perf_counter()
    timing = f"predict;dur={1000 * (done - t0):.2f}, handler;dur={1000 * (done - started):.2f}"
    return JSONResponse(result.model_dump(mode="json"), headers={"Server-Timing": timing})


async def _parse(request: Request, top_k: int | None, candidates: str | None):
    """(image bytes, top_k, candidates) from a JSON or multipart request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form()
        files = form.getlist("files") or form.getlist("file")
        if not files:
            raise Problem(422, "Invalid request", "send the images as multipart fields named 'files'")
        blobs = [await f.read() for f in files if hasattr(f, "read")]
        if not blobs:
            raise Problem(422, "Invalid request", "the 'files' fields hold no files")
        if len(blobs) > MAX_IMAGES:
            raise Problem(413, "Too many images", f"{len(blobs)} images; the limit is {MAX_IMAGES} per request")
        parts = [c for c in form.getlist("candidates") if isinstance(c, str)]
        # without candidates parts, the deprecated query form: one comma-separated string
        legacy = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
        cands = parts or legacy
        return blobs, top_k or _form_top_k(form.get("top_k")), cands
    if ctype != "application/json":
        raise Problem(415, "Unsupported Media Type", "send application/json or multipart/form-data")
    try:
        body = PredictRequest.model_validate_json(await request.body())
    except ValueError as exc:
        raise _invalid(exc, "body") from exc
    return service.decode_b64(body.images), top_k or body.top_k, body.candidates


def _form_top_k(value: object) -> int:
    """The multipart `top_k` part: 5 when absent, 422 unless an integer from 1 to 1000."""
    if value is None:
        return 5
    text = value.strip() if isinstance(value, str) else ""
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 1000):
        msg = "an integer from 1 to 1000"
        raise Problem(422, "Validation failed", f"body.top_k: {msg}", errors=[{"loc": ["body", "top_k"], "msg": msg}])
    return int(text)


def _invalid(exc: ValueError, *where: str) -> Problem:
    errors = getattr(exc, "errors", lambda: [])()
    found = [
        {"loc": [*where, *(str(x) for x in e["loc"])], "msg": e["msg"], "type": e.get("type", "value_error")}
        for e in errors
    ] or [{"loc": list(where), "msg": str(exc), "type": "value_error"}]
    first = found[0]
    return Problem(422, "Validation failed", f"{'.'.join(first['loc'])}: {first['msg']}", errors=found)
