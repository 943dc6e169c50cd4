from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select, tuple_

from app import exports
from app.classifiers.models import ClassifierRow
from app.core import idempotency, pagination
from app.core.db import get_sessionmaker
from app.core.deps import SessionDep, TenantDep
from app.core.problems import Problem
from app.datasets.models import Dataset, Item
from app.exports.schemas import JSON_FORMATS
from app.jobs import repository as repo
from app.jobs import service, states
from app.jobs.models import JobAnnotator, JobResult, result_dict
from app.jobs.schemas import AnnotatorList, JobCreate, JobOut, JobPage, JobSummary, LabelRow
from app.ml.text import show
from app.ml.votes import agreed
from app.openapi import register
from app.review import repository as review_repo
from app.review import service as review_service
from app.review.models import Review

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
PROBLEM = {"content": {"application/problem+json": {}}}
ROUTE = "POST /v1/jobs"


LOCATION = {"Location": {"description": "the job's path: poll it", "required": True, "schema": {"type": "string"}}}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={202: {"headers": LOCATION}, 404: PROBLEM, 409: PROBLEM, 422: PROBLEM},
)
def start_job(
    body: JobCreate,
    session: SessionDep,
    tenant: TenantDep,
    key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
):
    """Start a cleaning job on a dataset; poll the `Location` until the state is terminal."""
    fp = idempotency.fingerprint(ROUTE, body.model_dump_json())
    replayed = idempotency.replay(session, tenant, key, ROUTE, fp)
    if replayed is not None:
        return replayed
    job = service.create_job(session, tenant, body)
    out = service.job_out(session, job).model_dump(mode="json")
    headers = {"Location": f"/v1/jobs/{job.id}"}
    idempotency.remember(session, tenant, key, ROUTE, fp, 202, out, headers)
    idempotency.commit_or_conflict(session, key)  # the start message is sent after this commit
    return JSONResponse(out, status_code=202, headers=headers)


@router.get("", response_model=JobPage, responses={400: PROBLEM})
def list_jobs(session: SessionDep, tenant: TenantDep, limit: pagination.Limit = 100, cursor: pagination.Cursor = None):
    """The tenant's jobs, newest first, as summaries (no config or metrics; the detail route has
    them). Keyset-paginated: follow `next_cursor` until it is null."""
    rows = repo.list_jobs(session, tenant.id, cursor, limit)
    return pagination.page(rows, limit, pagination.time_id_cursor, JobSummary.model_validate)


@router.get("/{job_id}", response_model=JobOut, responses={404: PROBLEM})
def get_job(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """State, progress (stage, done/total, epoch, last loss, ETA), timestamps and error."""
    return service.job_out(session, service.require_job(session, tenant, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, responses={404: PROBLEM, 409: PROBLEM})
def cancel_job(job_id: uuid.UUID, session: SessionDep, tenant: TenantDep):
    """Cancel: a queued job at once, a running one between training batches ('cancelling')."""
    job = service.cancel_job(session, tenant, job_id)
    session.commit()
    return service.job_out(session, job)


LABEL_PAGE = 1000
ARGILLA_NAME = r"^[a-z0-9_-]*[a-z0-9][a-z0-9_-]*$"  # what an Argilla 2.x server takes as a question name
Flag = Literal["ambiguous", "candidates_suspect"]


def _rows(
    job_id: uuid.UUID, dataset_id: uuid.UUID, flag: Flag | None, max_confidence: float | None, review: bool
) -> Iterator[tuple[JobResult, list | None, dict | None, tuple | None]]:
    """A finished job's results, filtered, in item order (or review order), fetched a page at a
    time, each page in a short transaction of its own: no connection is held while the client
    reads (at its own pace). Pages follow the order's key, so none is skipped or repeated. Each
    result comes with its item's annotations, its source and its latest review (label, none of
    these), if any."""
    # review order: the review queue's ranks, stored with the results (app/ml/review.py)
    key = (JobResult.review_rank, JobResult.item_seq) if review else (JobResult.item_seq,)
    latest = review_repo.latest_ids(dataset_id).subquery()
    stmt = (
        select(JobResult, Item.annotations, Item.source, Review.id, Review.label, Review.none_of_these, *key[:-1])
        .outerjoin(Item, Item.seq == JobResult.item_seq)
        .outerjoin(latest, latest.c.item_seq == JobResult.item_seq)
        .outerjoin(Review, Review.id == latest.c.review_id)
        .where(JobResult.job_id == job_id)
    )
    if flag is not None:
        stmt = stmt.where(getattr(JobResult, flag).is_(True))
    if max_confidence is not None:
        stmt = stmt.where(JobResult.confidence <= max_confidence)
    stmt = stmt.order_by(*key).limit(LABEL_PAGE)
    after: tuple | None = None
    while True:
        page = stmt if after is None else stmt.where(tuple_(*key) > tuple_(*after))
        with get_sessionmaker()() as session:
            rows = session.execute(page).all()
        for row in rows:
            yield row[0], row[1], row[2], (None if row[3] is None else (row[4], row[5]))
        if len(rows) < LABEL_PAGE:
            return
        last = rows[-1]
        after = (*last[6:], last[0].item_seq)


def label_row(
    result: JobResult,
    annotations: list | None,
    source: dict | None,
    review: tuple | None,
    classes: tuple[str, ...],
) -> dict:
    """A LabelRow: the stored result with its item's annotations, the annotators who agree, where
    the item came from (its source, null unless a reader recorded one), a person's latest decision
    on the item, if any, and the label's quality score (cleanlab's self-confidence; out-of-sample
    when the job has k-fold pred_probs)."""
    votes = [{"ground_truth": False} | a for a in annotations or ()]
    decided = {
        "reviewed": review is not None,
        "reviewed_label": None if review is None else review[0],
        "reviewed_none_of_these": False if review is None else bool(review[1]),
    }
    row = result_dict(result) | {"annotations": votes, "agreed": agreed(votes, result.label), "source": source}
    return exports.with_quality(row | decided, classes)


LABELS_OK = {
    "description": "one row per item: `jsonl` writes a LabelRow a line (`application/x-ndjson`), `csv` a header and "
    "a row per item: the scalars, then the posterior, the annotations (annotator: label) and the agreeing annotators "
    "as JSON, then label_quality and the review columns (`text/csv`); `labelstudio`, `argilla`, `fiftyone` and "
    "`pred_probs` write JSON in those tools' shapes (`application/json`, one of the schemas listed); "
    "`pred_probs_npz` an `.npz` of NumPy arrays (`application/zip`)",
    "content": {
        "application/x-ndjson": {"schema": register(LabelRow)},
        "text/csv": {"schema": {"type": "string"}},
        "application/json": {"schema": JSON_FORMATS},
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
    },
}
DOWNLOAD_HEADERS = {
    "Content-Disposition": {
        "description": "`attachment; filename=labels-<job>.<csv|json|npz>` (csv, npz and the JSON formats)",
        "schema": {"type": "string"},
    }
}


@router.get(
    "/{job_id}/labels",
    response_class=StreamingResponse,
    responses={200: LABELS_OK | {"headers": DOWNLOAD_HEADERS}, 404: PROBLEM, 409: PROBLEM, 422: PROBLEM},
)
def get_labels(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    format: Annotated[
        Literal["jsonl", "csv", "labelstudio", "argilla", "fiftyone", "pred_probs", "pred_probs_npz"],
        Query(
            description="`jsonl`, `csv`; `labelstudio`: Label Studio predictions (`task` is the Label Studio task id "
            "the item was imported with, else the item id); `argilla`: "
            "Argilla 2.x records with suggestions; `fiftyone`: FiftyOne's labels.json; `pred_probs`: cleanlab's N x K "
            "pred_probs over the dataset's classes (out-of-sample when the job ran with cross_validation.folds) with "
            "the item ids, Candor's labels and a label_quality per item; `pred_probs_npz`: the same as NumPy arrays in "
            "an `.npz`"
        ),
    ] = "jsonl",
    flag: Annotated[Flag | None, Query(description="only the rows with this flag set")] = None,
    max_confidence: Annotated[
        float | None, Query(ge=0, le=1, description="only the rows whose confidence is at most this")
    ] = None,
    order: Annotated[
        Literal["item", "review"],
        Query(
            description="`item`: upload order. `review`: the review queue's order, reviewed items included: the "
            "expected benefit of a person's look first (the chance the label is wrong, weighted by how much the job "
            "confuses the item's pair of classes, plus the outside mass of a suspect set), then margin, then upload "
            "order"
        ),
    ] = "item",
    from_name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="`format=labelstudio`: the <Choices> name (default: the one a Label Studio import recorded "
            "with the item, else `choice`)",
        ),
    ] = None,
    to_name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="`format=labelstudio`: the <Image> name (default: the one a Label Studio import recorded "
            "with the item, else `image`)",
        ),
    ] = None,
    label_question: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=ARGILLA_NAME,
            description="`format=argilla`: the name of the dataset's single-label question the `label` suggestion "
            "answers (default `label`)",
        ),
    ] = None,
    candidates_question: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=ARGILLA_NAME,
            description="`format=argilla`: the name of the multi-label question the ranked candidates suggestion "
            "answers (default `candidates`)",
        ),
    ] = None,
):
    """The cleaned labels, streamed: label, confidence, posterior over the candidates, margin,
    mass outside the candidates, flags, and the zero-shot prior's choice. Filter with `flag` and
    `max_confidence`; `order=review` puts the rows most in need of a look first."""
    job = service.require_job(session, tenant, job_id)
    session.commit()  # the connection goes back to the pool before the rows stream out
    if job.state != states.SUCCEEDED:
        raise Problem(409, "Job not finished", f"job {job.id} is {job.state}; labels exist once it has succeeded")
    if order == "review":
        review_service.ensure_ranked(session, job)
    dataset = session.get(Dataset, job.dataset_id)
    version = session.scalar(select(ClassifierRow.version).where(ClassifierRow.job_id == job.id))
    argilla_names = {"argilla_label": label_question, "argilla_candidates": candidates_question}
    meta = exports.ExportMeta(
        classes=tuple(dataset.classes),
        model_version=version,
        from_name=from_name,
        to_name=to_name,
        **{k: v for k, v in argilla_names.items() if v is not None},
    )
    if meta.argilla_label == meta.argilla_candidates:
        raise Problem(
            422,
            "Invalid request",
            f"label_question and candidates_question are both {show(meta.argilla_label)}; an Argilla record takes "
            "one suggestion per question",
        )
    session.commit()

    def rows() -> Iterator[dict]:
        return (
            label_row(r, votes, source, review, meta.classes)
            for r, votes, source, review in _rows(job.id, job.dataset_id, flag, max_confidence, order == "review")
        )

    media_type, suffix = exports.FORMATS[format]
    headers = {} if format == "jsonl" else {"Content-Disposition": f'attachment; filename="labels-{job.id}.{suffix}"'}
    return StreamingResponse(exports.export(format, rows, meta), media_type=media_type, headers=headers)


ANNOTATORS_OK = {
    "description": "`json`: an AnnotatorList; `csv`: a header and a row per annotator (annotator, items, accuracy, "
    "confusion as a JSON object)",
    "content": {"application/json": {"schema": register(AnnotatorList)}, "text/csv": {"schema": {"type": "string"}}},
}


@router.get("/{job_id}/annotators", responses={200: ANNOTATORS_OK, 404: PROBLEM, 409: PROBLEM, 422: PROBLEM})
def get_annotators(
    job_id: uuid.UUID,
    session: SessionDep,
    tenant: TenantDep,
    format: Annotated[Literal["json", "csv"], Query(description="`json` or `csv`")] = "json",
):
    """Per annotator: items labelled, estimated accuracy and confusion between classes, as the job
    estimated them from the votes (`config.votes`; docs/method.md). Empty when the items carry no
    annotations or votes were off."""
    job = service.require_job(session, tenant, job_id)
    if job.state != states.SUCCEEDED:
        raise Problem(
            409, "Job not finished", f"job {job.id} is {job.state}; annotator estimates exist once it has succeeded"
        )
    classes = list(session.get(Dataset, job.dataset_id).classes)
    rows = session.scalars(
        select(JobAnnotator).where(JobAnnotator.job_id == job.id).order_by(JobAnnotator.annotator)
    ).all()
    out = [{"annotator": r.annotator, "items": r.items, "accuracy": r.accuracy, "confusion": r.confusion} for r in rows]
    session.commit()
    if format == "csv":
        return StreamingResponse(
            iter([exports.annotators_csv(out)]),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="annotators-{job.id}.csv"'},
        )
    return JSONResponse({"job_id": str(job.id), "classes": classes, "annotators": out})
