"""What the web UI's pages show, read from the database for one tenant."""

from __future__ import annotations

import uuid
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core import jsonsql
from app.core.security import TenantRef
from app.datasets import repository as datasets_repo
from app.datasets.models import Dataset, ImageBlob, Item
from app.jobs.models import Job, JobResult
from app.review.service import queue_rows
from app.ui import charts


def datasets(session: Session, tenant: TenantRef, limit: int = 50) -> list[dict]:
    """The tenant's newest datasets: item count, class histogram, candidate-set sizes, recent jobs."""
    out = []
    rows = session.scalars(
        select(Dataset).where(Dataset.tenant_id == tenant.id).order_by(Dataset.created_at.desc()).limit(limit)
    ).all()
    for ds in rows:
        count, total, hist = datasets_repo.candidate_stats(session, ds.id)
        size = jsonsql.array_length(session, Item.candidates)
        sizes = dict(
            session.execute(
                select(size, func.count()).where(Item.dataset_id == ds.id).group_by(size).order_by(size)
            ).all()
        )
        jobs = session.execute(
            select(Job.id, Job.state, Job.created_at)
            .where(Job.dataset_id == ds.id, Job.tenant_id == tenant.id)
            .order_by(Job.created_at.desc())
            .limit(10)
        ).all()
        classes = list(ds.classes)
        out.append(
            {
                "id": ds.id,
                "name": ds.name,
                "item_count": count,
                "classes": len(classes),
                "mean_set": total / count if count else 0.0,
                "class_chart": charts.bars(
                    classes, [hist.get(c, 0) for c in classes], "candidate sets holding each class"
                ),
                "size_chart": charts.columns(
                    [str(k) for k in sizes], list(sizes.values()), "candidate-set sizes", xlabel="candidates per item"
                ),
                "jobs": jobs,
            }
        )
    return out


def report(session: Session, job: Job) -> dict:
    """The pictures of a finished job's report."""
    classes = list(session.scalar(select(Dataset.classes).where(Dataset.id == job.dataset_id)))
    r_ = JobResult
    rows = session.execute(
        select(r_.label, r_.confidence, r_.posterior, r_.ambiguous, r_.candidates_suspect).where(r_.job_id == job.id)
    ).all()
    chosen = Counter(r.label for r in rows)
    index = {c: i for i, c in enumerate(classes)}
    won = [[0] * len(classes) for _ in classes]  # won[a][b]: sets holding a and b where a was chosen
    for r in rows:
        for other in r.posterior:
            if other != r.label and other in index and r.label in index:
                won[index[r.label]][index[other]] += 1
    metrics = job.metrics or {}
    history = metrics.get("history") or []
    trust = (metrics.get("selection") or {}).get("trust") or {}
    prior = trust.get("prior") or {}
    trust_labels, trust_values = [], []
    for label, key, source in (
        ("prior accuracy (estimated)", "accuracy", prior),
        ("prior's top-1 in the set", "prior_top1_in_candidates", metrics),
        ("chance of that", "chance_in_candidates", metrics),
        ("agreement with the prior", "agreement_with_prior", metrics),
        ("prior's weight cap", "prior_weight_max", trust),
    ):
        if isinstance(source.get(key), int | float):
            trust_labels.append(label)
            trust_values.append(round(float(source[key]), 4))
    return {
        "item_count": len(rows),
        "ambiguous": sum(r.ambiguous for r in rows),
        "suspect": sum(r.candidates_suspect for r in rows),
        "confidence": charts.histogram([r.confidence for r in rows], "confidence of the chosen labels"),
        "chosen": charts.bars(classes, [chosen.get(c, 0) for c in classes], "chosen labels per class"),
        "confusion": charts.heatmap(
            classes, won, "candidate pairs: row won over column", "row: the label chosen", "column: the other candidate"
        ),
        "loss": charts.line([float(h.get("loss", 0.0)) for h in history], "training loss per epoch"),
        "trust": charts.bars(trust_labels, trust_values, "label-free trust in the prior", color=charts.ACCENT),
        "prior": prior,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def review_item(session: Session, job: Job, pos: int) -> dict | None:
    """The ``pos``-th item (from 0) of the job's queue with its candidates (past the end, the
    last), or None when every item has been reviewed."""
    pos = max(pos, 0)
    page, remaining = queue_rows(session, job, offset=pos, limit=1)
    if not remaining:
        return None
    if not page:  # past the end: the last one
        pos = remaining - 1
        page, remaining = queue_rows(session, job, offset=pos, limit=1)
    result, score, other = page[0]
    candidates = sorted(result.posterior.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "pos": pos,
        "remaining": remaining,
        "result": result,
        "benefit": score,
        "runner_up": other,
        "candidates": [
            {"key": n + 1 if n < 9 else None, "label": c, "p": p, "bar": charts.posterior_bar(p)}
            for n, (c, p) in enumerate(candidates)
        ],
    }


def image(session: Session, tenant: TenantRef, job: Job, item_seq: int) -> bytes | None:
    """The bytes of one image of the job's dataset (the tenant's own)."""
    return session.scalar(
        select(ImageBlob.data)
        .join(Item, Item.image_sha256 == ImageBlob.sha256)
        .where(
            Item.seq == item_seq,
            Item.dataset_id == job.dataset_id,
            Item.seq <= job.item_seq_max,
            ImageBlob.tenant_id == tenant.id,
        )
    )


def media_type(data: bytes) -> str:
    """The image type from its first bytes."""
    for magic, kind in (
        (b"\x89PNG", "image/png"),
        (b"\xff\xd8", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
    ):
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def job_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
