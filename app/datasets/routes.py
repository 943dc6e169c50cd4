from __future__ import annotations

import hashlib
import tempfile
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.core import idempotency, pagination
from app.core.deps import SessionDep, TenantDep
from app.core.problems import Problem, not_found
from app.core.settings import get_settings
from app.datasets import repository as repo
from app.datasets import service
from app.datasets.schemas import (
    DatasetCreate,
    DatasetDetail,
    DatasetOut,
    DatasetPage,
    DatasetSummary,
    IngestResult,
    ItemOut,
    ItemPage,
    ItemsBatch,
)
from app.imports import FORMATS_DOC as IMPORT_FORMATS_DOC
from app.imports import ImportFormat, reader
from app.jobs import repository as jobs_repo
from app.jobs.leases import LIVE

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]
PROBLEM = {"content": {"application/problem+json": {}}}
LOCATION = {"Location": {"description": "the path of the new resource", "required": True, "schema": {"type": "string"}}}
ZIP_BODY = {"schema": {"type": "string", "format": "binary"}}


@router.post("", status_code=201, response_model=DatasetOut, responses={201: {"headers": LOCATION}, 422: PROBLEM})
def create_dataset(body: DatasetCreate, session: SessionDep, tenant: TenantDep, key: IdemKey = None):
    """Create a dataset with its class list (at least two distinct names) and the candidate policy
    that turns items' annotations into candidate sets (default: the union of the annotators' labels)."""
    fp = idempotency.fingerprint("create_dataset", body.model_dump_json())
    replayed = idempotency.replay(session, tenant, key, "POST /v1/datasets", fp)
    if replayed is not None:
        return replayed
    ds = service.create_dataset(session, tenant, body)
    out = DatasetOut.model_validate(ds).model_dump(mode="json")
    headers = {"Location": f"/v1/datasets/{ds.id}"}
    idempotency.remember(session, tenant, key, "POST /v1/datasets", fp, 201, out, headers)
    idempotency.commit_or_conflict(session, key)
    return JSONResponse(out, status_code=201, headers=headers)


@router.get("", response_model=DatasetPage, responses={400: PROBLEM})
def list_datasets(
    session: SessionDep, tenant: TenantDep, limit: pagination.Limit = 100, cursor: pagination.Cursor = None
):
    """The tenant's datasets, newest first, as summaries (the class count, not the class list; the
    detail route has the whole dataset). Keyset-paginated: follow `next_cursor` until it is null."""
    rows = repo.list_datasets(session, tenant.id, cursor, limit)
    return pagination.page(rows, limit, pagination.time_id_cursor, DatasetSummary.model_validate)


@router.get("/{dataset_id}", response_model=DatasetDetail, responses={404: PROBLEM})
def get_dataset(dataset_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """The dataset with item count, mean candidate-set size and a class histogram of the sets."""
    return service.dataset_detail(session, service.require_dataset(session, tenant, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses={404: PROBLEM, 409: PROBLEM})
def delete_dataset(dataset_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Delete the dataset with its items, its jobs and their labels and classifiers, and the images
    (and their cached features) that no other dataset of the tenant uses. 409 while one of its jobs
    is queued or running: cancel it first."""
    if repo.lock_dataset(session, tenant.id, dataset_id, shared=False) is None:
        raise not_found("dataset", dataset_id)
    live = jobs_repo.live_jobs(session, dataset_id, LIVE)
    if live:
        raise Problem(
            409,
            "Dataset in use",
            f"job {live[0]} on dataset {dataset_id} has not finished; cancel it (POST /v1/jobs/{live[0]}/cancel) "
            "and delete the dataset once it has stopped",
        )
    repo.delete_dataset(session, tenant.id, dataset_id)
    session.commit()
    return Response(status_code=204)


def _ingest_response(session, tenant, ds, incoming, key, route, fp) -> JSONResponse:
    result = service.ingest(session, tenant, ds, incoming)
    status = 201 if result.created else 200
    body = result.model_dump(mode="json")
    idempotency.remember(session, tenant, key, route, fp, status, body)
    idempotency.commit_or_conflict(session, key)
    return JSONResponse(body, status_code=status)


@router.post(
    "/{dataset_id}/items",
    response_model=IngestResult,
    responses={201: {"model": IngestResult}, 404: PROBLEM, 413: PROBLEM, 422: PROBLEM},
)
def add_items(dataset_id: uuid.UUID, batch: ItemsBatch, session: SessionDep, tenant: TenantDep, key: IdemKey = None):
    """Add a batch of items (base64 images). All-or-nothing: one bad item rejects the batch (422,
    per-item reasons); items already stored with the same image and candidates are 'unchanged'."""
    limit = get_settings().max_batch_items
    if len(batch.items) > limit:
        raise Problem(413, "Batch too large", f"the batch holds {len(batch.items)} items; the limit is {limit}")
    ds = service.require_dataset(session, tenant, dataset_id)
    route = f"POST /v1/datasets/{dataset_id}/items"
    fp = idempotency.fingerprint(route, batch.model_dump_json())
    replayed = idempotency.replay(session, tenant, key, route, fp)
    if replayed is not None:
        return replayed
    return _ingest_response(session, tenant, ds, service.incoming_from_json(batch.items), key, route, fp)


@router.post(
    "/{dataset_id}/imports",
    response_model=IngestResult,
    responses={201: {"model": IngestResult}, 404: PROBLEM, 413: PROBLEM, 415: PROBLEM, 422: PROBLEM},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "the ZIP file as it is",
            "content": {"application/zip": ZIP_BODY, "application/octet-stream": ZIP_BODY},
        }
    },
)
async def import_zip(
    dataset_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    key: IdemKey = None,
    format: Annotated[ImportFormat, Query(description=IMPORT_FORMATS_DOC)] = ImportFormat.candor,
):
    """Import a ZIP sent as the request body (`Content-Type: application/zip` or
    `application/octet-stream`): `manifest.jsonl`
    (one `{id, image, candidates}` or `{id, image, annotations}` a line, image paths relative to it)
    and the images; or an ImageFolder layout (`CLASS/ID.png`) whose manifest lines omit `image`. Streamed to disk; no
    database transaction is open while the body arrives."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/zip", "application/x-zip-compressed", "application/octet-stream"):
        raise Problem(415, "Unsupported Media Type", "send the ZIP as the body with Content-Type: application/zip")
    limit = get_settings().max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Problem(413, "Upload too large", f"the upload is {declared} bytes; the limit is {limit}")
    with tempfile.TemporaryFile() as tmp:
        size = 0
        digest = hashlib.sha256()
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem(413, "Upload too large", f"the upload exceeds the limit of {limit} bytes")
            digest.update(chunk)
            tmp.write(chunk)
        tmp.seek(0)
        return await run_in_threadpool(_import, session, tenant, dataset_id, tmp, digest.hexdigest(), key, format.value)


def _import(session, tenant, dataset_id: uuid.UUID, tmp, digest: str, key: str | None, fmt: str) -> JSONResponse:
    ds = service.require_dataset(session, tenant, dataset_id)
    route = f"POST /v1/datasets/{dataset_id}/imports"
    fp = idempotency.fingerprint(route, digest) if fmt == "candor" else idempotency.fingerprint(route, fmt, digest)
    replayed = idempotency.replay(session, tenant, key, route, fp)
    if replayed is not None:
        return replayed
    with service.open_zip(tmp) as zf:
        return _ingest_response(session, tenant, ds, reader(fmt)(zf, ds.classes), key, route, fp)


@router.get("/{dataset_id}/items", response_model=ItemPage, responses={400: PROBLEM, 404: PROBLEM})
def list_items(
    dataset_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    limit: pagination.Limit = 100,
    cursor: pagination.Cursor = None,
):
    """Items in upload order, keyset-paginated: follow `next_cursor` until it is null."""
    ds = service.require_dataset(session, tenant, dataset_id)
    rows = repo.page_items(session, ds.id, pagination.decode_seq(cursor), limit)
    return pagination.page(
        rows,
        limit,
        lambda r: pagination.encode_seq(r.seq),
        lambda r: ItemOut(
            id=r.external_id,
            image_sha256=r.image_sha256,
            candidates=r.candidates,
            annotations=r.annotations or [],
            source=r.source,
            created_at=r.created_at,
        ),
    )
