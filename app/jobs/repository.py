"""Database access for jobs, their chunks and results, and the image-feature cache."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from sqlalchemy import Row, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.classifiers.models import ClassifierRow
from app.core import pagination
from app.jobs.models import FeatureRow, Job, JobChunk


def get_job(session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def live_jobs(session: Session, dataset_id: uuid.UUID, states: Sequence[str]) -> list[uuid.UUID]:
    """The ids of the dataset's jobs in one of ``states``, oldest first."""
    stmt = select(Job.id).where(Job.dataset_id == dataset_id, Job.state.in_(states)).order_by(Job.created_at)
    return list(session.scalars(stmt))


def list_jobs(session: Session, tenant_id: uuid.UUID, cursor: str | None, limit: int) -> Sequence[Row]:
    """A page of the tenant's jobs, newest first, with each job's classifier id: one query, and
    only the columns of a summary (no config, metrics or checkpoint)."""
    stmt = (
        select(
            Job.id,
            Job.dataset_id,
            Job.state,
            Job.config_hash,
            Job.progress,
            Job.error,
            Job.attempt,
            ClassifierRow.id.label("classifier_id"),
            Job.created_at,
            Job.updated_at,
            Job.started_at,
            Job.finished_at,
        )
        .outerjoin(ClassifierRow, ClassifierRow.job_id == Job.id)
        .where(Job.tenant_id == tenant_id)
    )
    return session.execute(pagination.newest_first(stmt, Job.created_at, Job.id, cursor, limit)).all()


def missing_features(
    session: Session, tenant_id: uuid.UUID, backbone_id: str, view: str, hashes: Sequence[str]
) -> list[str]:
    have: set[str] = set()
    for start in range(0, len(hashes), 1000):
        chunk = list(hashes[start : start + 1000])
        have.update(
            session.scalars(
                select(FeatureRow.sha256).where(
                    FeatureRow.tenant_id == tenant_id,
                    FeatureRow.backbone_id == backbone_id,
                    FeatureRow.view == view,
                    FeatureRow.sha256.in_(chunk),
                )
            )
        )
    return [h for h in hashes if h not in have]


def mark_chunk_done(session: Session, job_id: uuid.UUID, index: int) -> tuple[int, int] | None:
    """Count a chunk once; returns (done, total) when this call counted it, None on a re-delivery."""
    counted = session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.index == index, JobChunk.done.is_(False))
        .values(done=True)
        .execution_options(synchronize_session=False)
    ).rowcount
    if counted != 1:
        return None
    row = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(chunks_done=Job.chunks_done + 1)
        .returning(Job.chunks_done, Job.chunks_total)
        .execution_options(synchronize_session=False)
    ).one()
    return int(row[0]), int(row[1])


class DbFeatureStore:
    """The engine's FeatureStore protocol on the `features` table (float32 little-endian blobs)."""

    def __init__(self, sessions: sessionmaker[Session], tenant_id: uuid.UUID):
        self.sessions = sessions
        self.tenant_id = tenant_id

    def get_many(self, backbone_id, view, hashes):
        out: dict[str, np.ndarray] = {}
        hashes = list(dict.fromkeys(hashes))
        with self.sessions() as session:
            for start in range(0, len(hashes), 1000):
                chunk = hashes[start : start + 1000]
                rows = session.execute(
                    select(FeatureRow.sha256, FeatureRow.vector).where(
                        FeatureRow.tenant_id == self.tenant_id,
                        FeatureRow.backbone_id == backbone_id,
                        FeatureRow.view == view,
                        FeatureRow.sha256.in_(chunk),
                    )
                )
                for h, blob in rows:
                    out[h] = np.frombuffer(blob, dtype="<f4").copy()
        return out

    def put_many(self, backbone_id, view, features):
        if not features:
            return
        rows = [
            {
                "tenant_id": self.tenant_id,
                "backbone_id": backbone_id,
                "view": view,
                "sha256": h,
                "vector": np.asarray(v, dtype="<f4").tobytes(),
            }
            for h, v in features.items()
        ]
        with self.sessions() as session:
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            session.execute(insert(FeatureRow).values(rows).on_conflict_do_nothing())
            session.commit()
