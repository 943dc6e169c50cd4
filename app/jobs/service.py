"""Job submission, reading and cancellation (the API side)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.classifiers.models import ClassifierRow
from app.core.db import utcnow
from app.core.problems import Problem, not_found
from app.core.security import TenantRef
from app.core.settings import get_settings
from app.core.uow import after_commit
from app.datasets import repository as datasets_repo
from app.jobs import dispatch, states
from app.jobs import repository as repo
from app.jobs.models import Job
from app.jobs.schemas import JobCreate, JobOut, JobProgress
from app.ml.backbones import BackboneUnavailable, check_prompts, check_spec
from app.ml.config import CleanConfig


def check_config(config: CleanConfig, classes: list[str]) -> None:
    """422 for a config the worker would refuse for a reason known now: the backbone spec (unknown
    model or tag, a checkpoint outside CANDOR_CHECKPOINT_DIRS) and prompts that do not fit its text
    tower (long class names, a long ctx_init). Loads no weights."""
    try:
        check_spec(config.backbone, get_settings().checkpoint_dirs)
    except ValueError as exc:
        raise Problem(422, "Invalid config", f"config.backbone: {exc}") from None
    try:
        check_prompts(config.backbone, classes, config.prompt.n_ctx, config.prompt.ctx_init)
    except ValueError as exc:
        raise Problem(422, "Invalid config", f"config: {exc}") from None
    except BackboneUnavailable:
        pass  # this host lacks the backbone's tokenizer; the worker decides


def create_job(session: Session, tenant: TenantRef, body: JobCreate) -> Job:
    ds = datasets_repo.lock_dataset(session, tenant.id, body.dataset_id, shared=True)  # not deleted meanwhile
    if ds is None:
        raise not_found("dataset", body.dataset_id)
    seq_max = datasets_repo.max_item_seq(session, ds.id)
    if seq_max == 0:
        raise Problem(409, "Dataset is empty", f"dataset {ds.id} has no items; add items before starting a job")
    check_config(body.config, list(ds.classes))
    folds = body.config.cross_validation.folds
    if folds and datasets_repo.count_items(session, ds.id) < folds:
        raise Problem(
            422,
            "Invalid config",
            f"config.cross_validation.folds: {folds} folds need at least {folds} items; dataset {ds.id} has fewer",
        )
    job = Job(
        tenant_id=tenant.id,
        dataset_id=ds.id,
        state=states.QUEUED,
        config=body.config.model_dump(mode="json"),
        config_hash=body.config.digest(),
        item_seq_max=seq_max,  # items added later belong to the next job
        attempt=1,  # this first delivery; the reaper counts each one after it
        progress={"stage": "queued"},
    )
    session.add(job)
    session.flush()
    after_commit(session, lambda job_id=job.id: dispatch.send(dispatch.START, job_id))
    return job


def require_job(session: Session, tenant: TenantRef, job_id: uuid.UUID) -> Job:
    job = repo.get_job(session, tenant.id, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


def cancel_job(session: Session, tenant: TenantRef, job_id: uuid.UUID) -> Job:
    """Queued jobs are cancelled at once; running ones move to 'cancelling' and the worker stops
    between batches. Terminal jobs answer 409."""
    job = require_job(session, tenant, job_id)
    now = utcnow()
    moved = states.finish(
        session, job.id, states.CANCELLED, only_from={states.QUEUED}, cancel_requested_at=now
    ) or states.transition(session, job.id, states.CANCELLING, cancel_requested_at=now)
    session.refresh(job)
    if not moved and job.state != states.CANCELLING:
        raise Problem(409, "Conflict", f"job {job.id} is already {job.state}")
    return job


def job_out(session: Session, job: Job) -> JobOut:
    classifier_id = session.scalar(select(ClassifierRow.id).where(ClassifierRow.job_id == job.id))
    return JobOut(
        id=job.id,
        dataset_id=job.dataset_id,
        state=job.state,
        config=job.config,
        config_hash=job.config_hash,
        progress=JobProgress(**{k: v for k, v in (job.progress or {}).items() if k in JobProgress.model_fields}),
        error=job.error,
        attempt=job.attempt,
        heartbeat_at=job.heartbeat_at,
        classifier_id=classifier_id,
        metrics=job.metrics,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        cancel_requested_at=job.cancel_requested_at,
    )
