"""Reviews: people's decisions on what a job could not settle, and what the next job makes of them.

A decision names a class, or says "none of these". Each is a row (the audit trail: who, when,
on which job's labels); an item's latest decision is the one that counts. The next job on the
dataset reads the decisions made before it was created (:func:`reviewed_candidates`): a class
becomes the item's candidate set alone; "none of these" takes the set's labels away, leaving the
dataset's other classes as the set.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core import pagination
from app.core.problems import Problem, not_found
from app.core.security import TenantRef
from app.datasets.models import Dataset, Item
from app.jobs import service as jobs_service
from app.jobs import states
from app.jobs.models import Job, JobResult
from app.ml.review import ranks, review_row, runner_up
from app.review import repository as repo
from app.review.models import Review
from app.review.schemas import QueueItem, ReviewCreate, ReviewOut, ReviewPage, ReviewQueue


def finished_job(session: Session, tenant: TenantRef, job_id: uuid.UUID) -> Job:
    """The tenant's job, once it has succeeded (404 for another tenant's, 409 before it ends)."""
    job = jobs_service.require_job(session, tenant, job_id)
    if job.state != states.SUCCEEDED:
        detail = f"job {job.id} is {job.state}; its items can be reviewed once it has succeeded"
        raise Problem(409, "Job not finished", detail)
    return job


def ensure_ranked(session: Session, job: Job) -> None:
    """Give the job's results their review rank and benefit where they lack them (results stored
    before migration 0011, or by a worker of that age): once per job, the first time it is needed."""
    unranked = select(JobResult.item_seq).where(JobResult.job_id == job.id, JobResult.review_rank.is_(None)).limit(1)
    if session.scalar(unranked) is None:
        return
    results = session.scalars(select(JobResult).where(JobResult.job_id == job.id).order_by(JobResult.item_seq)).all()
    ranked = ranks([review_row(r) for r in results])
    session.execute(
        update(JobResult),
        [
            {"job_id": job.id, "item_seq": r.item_seq, "review_rank": rank, "review_benefit": score}
            for r, (rank, score) in zip(results, ranked, strict=True)
        ],
    )
    session.flush()


def queue_rows(
    session: Session, job: Job, offset: int = 0, limit: int | None = None
) -> tuple[list[tuple[JobResult, float, str | None]], int]:
    """The job's results not reviewed yet, most beneficial first, from ``offset`` (``limit`` of
    them): (result, benefit, runner-up) each; and how many are not reviewed in all. One indexed
    read of the stored ranks."""
    ensure_ranked(session, job)
    latest = repo.latest_ids(job.dataset_id).subquery()
    open_ = (
        select(JobResult)
        .outerjoin(latest, latest.c.item_seq == JobResult.item_seq)
        .where(JobResult.job_id == job.id, latest.c.review_id.is_(None))
    )
    remaining = session.scalar(select(func.count()).select_from(open_.subquery())) or 0
    page = session.scalars(open_.order_by(JobResult.review_rank).offset(offset).limit(limit)).all()
    return [(r, float(r.review_benefit), runner_up(review_row(r))) for r in page], remaining


def queue(session: Session, tenant: TenantRef, job_id: uuid.UUID, limit: int) -> ReviewQueue:
    job = finished_job(session, tenant, job_id)
    ranked, remaining = queue_rows(session, job, limit=limit)
    total = session.scalar(select(func.count()).select_from(JobResult).where(JobResult.job_id == job.id)) or 0
    items = [
        QueueItem(
            id=r.external_id,
            rank=n + 1,
            benefit=round(score, 6),
            runner_up=other,
            label=r.label,
            confidence=r.confidence,
            posterior=r.posterior,
            margin=r.margin,
            outside_mass=r.outside_mass,
            ambiguous=r.ambiguous,
            candidates_suspect=r.candidates_suspect,
            prior_label=r.prior_label,
        )
        for n, (r, score, other) in enumerate(ranked)
    ]
    return ReviewQueue(items=items, remaining=remaining, reviewed=total - remaining)


def _item_of_job(session: Session, job: Job, item_id: str) -> tuple[Item, JobResult]:
    found = session.execute(
        select(Item, JobResult)
        .join(JobResult, (JobResult.item_seq == Item.seq) & (JobResult.job_id == job.id))
        .where(Item.dataset_id == job.dataset_id, Item.external_id == item_id)
    ).one_or_none()
    if found is None:
        raise Problem(404, "Not found", f"item {item_id} is not among the items of job {job.id}")
    return found[0], found[1]


def decide(session: Session, tenant: TenantRef, job_id: uuid.UUID, body: ReviewCreate) -> ReviewOut:
    """Store one decision (422 naming the item and the problem; nothing stored then)."""
    job = finished_job(session, tenant, job_id)
    item, result = _item_of_job(session, job, body.item_id)
    classes = list(session.scalar(select(Dataset.classes).where(Dataset.id == job.dataset_id)))
    where = f"item {body.item_id}"
    if body.none_of_these and body.label is not None:
        raise Problem(422, "Invalid review", f"{where}: give a label or none_of_these, not both")
    if not body.none_of_these and body.label is None:
        raise Problem(422, "Invalid review", f"{where}: give a label (one of the dataset's classes) or none_of_these")
    if body.label is not None and body.label not in classes:
        raise Problem(422, "Invalid review", f"{where}: label '{body.label}' is not among the dataset's classes")
    # "none of these" rejects the candidates the job showed (its posterior's classes: the set the job
    # trained on, which votes may have widened or an earlier review narrowed)
    if body.none_of_these and not set(classes) - shown(result, item):
        raise Problem(
            422, "Invalid review", f"{where}: its candidates are every class; none of these would leave nothing"
        )
    review = Review(
        tenant_id=tenant.id,
        dataset_id=job.dataset_id,
        item_seq=item.seq,
        job_id=job.id,
        label=body.label,
        none_of_these=body.none_of_these,
        reviewer=tenant.reviewer,
        reviewer_key_id=tenant.key_id,
    )
    session.add(review)
    session.flush()
    return review_out(review, item.external_id)


def shown(result: JobResult | None, item: Item) -> set[str]:
    """The candidates a job showed for an item (its posterior's classes); the item's stored set when
    the job is gone."""
    return set(result.posterior) if result is not None and result.posterior else set(item.candidates)


def review_out(review: Review, item_id: str) -> ReviewOut:
    return ReviewOut(
        id=review.id,
        item_id=item_id,
        job_id=review.job_id,
        label=review.label,
        none_of_these=review.none_of_these,
        reviewer=review.reviewer,
        created_at=review.created_at,
    )


def decisions(
    session: Session,
    tenant: TenantRef,
    job_id: uuid.UUID,
    cursor: str | None,
    limit: int,
    item_id: str | None,
    latest_only: bool,
) -> ReviewPage:
    """The decisions on the items of the job's dataset, in the order they were made."""
    job = jobs_service.require_job(session, tenant, job_id)
    after = 0
    if cursor:
        after = pagination._int(pagination.decode(cursor, "r", 1)[0], 0, pagination.INT64_MAX)
    seq = None
    if item_id is not None:
        seq = session.scalar(select(Item.seq).where(Item.dataset_id == job.dataset_id, Item.external_id == item_id))
        if seq is None:
            raise not_found("item", item_id)
    rows = repo.page(session, job.dataset_id, after, limit, seq, latest_only)
    return pagination.page(rows, limit, lambda r: pagination.encode("r", r[0].id), lambda r: review_out(r[0], r[1]))


def reviewed_candidates(
    session: Session, dataset_id: uuid.UUID, classes: Sequence[str], items: Sequence[Item], until: datetime | None
) -> dict[int, list[str]]:
    """The candidate sets a job takes from the decisions made up to ``until`` (its creation): by
    item seq, the reviewed class alone, or for "none of these" the classes outside the set the
    reviewed job showed (see :func:`shown`)."""
    decided = repo.latest(session, dataset_id, until)
    rejected = [(r.job_id, seq) for seq, r in decided.items() if r.none_of_these and r.job_id is not None]
    results: dict[tuple, JobResult] = {}
    for job_id in {j for j, _ in rejected}:
        seqs = [s for j, s in rejected if j == job_id]
        for res in session.scalars(select(JobResult).where(JobResult.job_id == job_id, JobResult.item_seq.in_(seqs))):
            results[(job_id, res.item_seq)] = res
    out: dict[int, list[str]] = {}
    for item in items:
        review = decided.get(item.seq)
        if review is None:
            continue
        if review.none_of_these:
            seen = shown(results.get((review.job_id, item.seq)), item)
            rest = [c for c in classes if c not in seen]
            if rest:
                out[item.seq] = rest
        elif review.label in classes:
            out[item.seq] = [review.label]
    return out
