from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.classifiers import service
from app.classifiers.schemas import ClassifierOut, ClassifierSummary, PredictRequest, PredictResponse
from app.core import pagination
from app.core.deps import SessionDep, TenantDep
from app.core.pagination import Page
from app.core.problems import Problem

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"])
MAX_IMAGES = 256
PROBLEM = {"content": {"application/problem+json": {}}}


@router.get("", response_model=Page[ClassifierSummary], responses={400: PROBLEM})
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


@router.post(
    "/{classifier_id}/predict",
    response_model=PredictResponse,
    responses={404: PROBLEM, 415: PROBLEM, 422: PROBLEM},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": PredictRequest.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    }
                },
            }
        }
    },
)
async def predict(
    classifier_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    top_k: Annotated[int | None, Query(ge=1, le=1000)] = None,
    candidates: Annotated[str | None, Query(description="comma-separated classes (multipart form)")] = None,
):
    """Classify images: JSON `{images: [base64], top_k, candidates}` or multipart `files` with
    `?top_k=&candidates=a,b`. One image forward and a matmul per image on a warm backbone. The
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
        cands = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
        return blobs, top_k or 5, cands
    if ctype != "application/json":
        raise Problem(415, "Unsupported Media Type", "send application/json or multipart/form-data")
    try:
        body = PredictRequest.model_validate_json(await request.body())
    except ValueError as exc:
        errors = getattr(exc, "errors", lambda: [])()
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        raise Problem(
            422,
            "Validation failed",
            f"{'.'.join(map(str, first['loc']))}: {first['msg']}",
            errors=[{"loc": [str(x) for x in e["loc"]], "msg": e["msg"]} for e in errors],
        ) from exc
    return service.decode_b64(body.images), top_k or body.top_k, body.candidates
