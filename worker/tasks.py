"""Thin Celery tasks: each calls one idempotent pipeline step; all state is in the database."""

from __future__ import annotations

from app.jobs import dispatch, pipeline, reaper
from app.webhooks import delivery
from worker.celery_app import celery_app


@celery_app.task(name=dispatch.START)
def start_job(job_id: str) -> None:
    pipeline.start_job(job_id)


@celery_app.task(name=dispatch.FEATURIZE)
def featurize_chunk(job_id: str, index: int) -> None:
    pipeline.featurize_chunk(job_id, index)


@celery_app.task(name=dispatch.TRAIN)
def train_job(job_id: str) -> None:
    pipeline.train_job(job_id)


@celery_app.task(name=dispatch.REAP)
def reap_jobs() -> int:
    return len(reaper.reap())


@celery_app.task(name=dispatch.DELIVER_WEBHOOK)
def deliver_webhook(delivery_id: str) -> None:
    delivery.deliver(delivery_id)


@celery_app.task(name=dispatch.SWEEP_WEBHOOKS)
def sweep_webhooks() -> int:
    return delivery.sweep()
