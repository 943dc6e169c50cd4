from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, JSONType, new_id, utcnow


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),)  # newest-first pages
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict] = mapped_column(JSONType)
    config_hash: Mapped[str] = mapped_column(String(32))
    progress: Mapped[dict] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    backbone_id: Mapped[str | None] = mapped_column(String(255), default=None)
    item_seq_max: Mapped[int] = mapped_column(BigInteger, default=0)  # the job's items: seq <= this
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint: Mapped[bytes | None] = mapped_column(LargeBinary, default=None, deferred=True)
    checkpoint_meta: Mapped[dict | None] = mapped_column(JSONType, default=None)
    metrics: Mapped[dict | None] = mapped_column(JSONType, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # The lease: whatever works on the job renews heartbeat_at; the reaper drives on a job whose
    # heartbeat is older than the lease. Training also takes the lease by owner token (fencing).
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)


class JobChunk(Base):
    """One featurisation chunk of a job; counted once however often its task is delivered."""

    __tablename__ = "job_chunks"
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    hashes: Mapped[list] = mapped_column(JSONType)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # deliveries started


class JobResult(Base):
    __tablename__ = "job_results"
    __table_args__ = (Index("ix_job_results_review_rank", "job_id", "review_rank"),)  # the review queue's order
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    item_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # items.seq
    external_id: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(255))
    confidence: Mapped[float] = mapped_column(Float)
    posterior: Mapped[dict] = mapped_column(JSONType)
    margin: Mapped[float] = mapped_column(Float)
    outside_mass: Mapped[float] = mapped_column(Float)
    ambiguous: Mapped[bool] = mapped_column(Boolean)
    candidates_suspect: Mapped[bool] = mapped_column(Boolean)
    prior_label: Mapped[str | None] = mapped_column(String(255))
    # the item's k-fold out-of-sample probabilities over all classes (cross_validation.folds), else null
    pred_probs_oos: Mapped[list | None] = mapped_column(JSONType, nullable=True)
    # the item's place in the job's review queue (app/ml/review.py), from 1, and its expected benefit;
    # null for results stored before migration 0011 until the queue first ranks them
    review_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    review_benefit: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobAnnotator(Base):
    """What a job estimated about one annotator from the votes (app/ml/crowd.py): items voted on,
    accuracy and confusion ``{true class: {given label: probability}}``."""

    __tablename__ = "job_annotators"
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    annotator: Mapped[str] = mapped_column(String(255), primary_key=True)
    items: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    confusion: Mapped[dict] = mapped_column(JSONType)


RESULT_FIELDS = (
    "label", "confidence", "posterior", "margin", "outside_mass", "ambiguous", "candidates_suspect", "prior_label"
)  # fmt: skip


def result_row(
    job_id, item_seq: int, item, review: tuple[int, float], pred_probs_oos: list[float] | None = None
) -> dict:
    """A job_results row from the engine's ItemResult, its (rank, benefit) in the review queue and
    its out-of-sample pred_probs row."""
    rank, benefit = review
    return {
        "job_id": job_id,
        "item_seq": item_seq,
        "external_id": item.id,
        "pred_probs_oos": pred_probs_oos,
        "review_rank": rank,
        "review_benefit": benefit,
    } | {f: getattr(item, f) for f in RESULT_FIELDS}


def result_dict(row: JobResult) -> dict:
    """The public form of a stored result: the engine's ItemResult fields and the out-of-sample
    pred_probs row (null without cross-validation)."""
    return {"id": row.external_id, "pred_probs_oos": row.pred_probs_oos} | {f: getattr(row, f) for f in RESULT_FIELDS}


class FeatureRow(Base):
    """Image features cached per (tenant, backbone id, view, image sha256). Scoped to the tenant like
    the images themselves, so a job's progress never reveals what another tenant has uploaded."""

    __tablename__ = "features"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    backbone_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    view: Mapped[str] = mapped_column(String(16), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
