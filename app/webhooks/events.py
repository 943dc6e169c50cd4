"""Domain events in, outbox rows out.

:func:`job_finished` is called by :func:`app.jobs.states.finish`, the one way into a terminal
state. It only notes the event on the session; just before that session commits, one delivery row
per subscribed endpoint is written in the same transaction (so the classifier a succeeding job
stores after its state change is in the payload). Once the transaction has committed, each
delivery is handed to a worker. A rolled-back transaction reports nothing.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from sqlalchemy import event, insert, select
from sqlalchemy.orm import Session

from app.classifiers.models import ClassifierRow
from app.core.db import new_id, utcnow
from app.core.settings import get_settings
from app.core.uow import after_commit
from app.jobs.models import Job
from app.webhooks import delivery
from app.webhooks import repository as repo
from app.webhooks.models import WebhookDelivery

JOB_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
_KEY = "candor_webhook_events"


def job_finished(session: Session, job_id: uuid.UUID, state: str) -> None:
    """Note that a job has reached the terminal ``state`` in this session's transaction."""
    session.info.setdefault(_KEY, []).append((job_id, state))


def iso(at: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` (SQLite hands back naive UTC)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat().replace("+00:00", "Z")


def job_payload(session: Session, job_id: uuid.UUID, state: str) -> tuple[uuid.UUID, str, dict]:
    """(tenant id, event type, payload) of a job that has reached ``state``."""
    job = session.execute(
        select(Job.tenant_id, Job.dataset_id, Job.error, Job.finished_at).where(Job.id == job_id)
    ).one()
    classifier_id = session.scalar(select(ClassifierRow.id).where(ClassifierRow.job_id == job_id))
    base = get_settings().public_url or ""  # absolute links when the API's public address is known
    links = {"job": f"{base}/v1/jobs/{job_id}"}
    if state == "succeeded":
        links["labels"] = f"{base}/v1/jobs/{job_id}/labels"
    if classifier_id is not None:
        links["classifier"] = f"{base}/v1/classifiers/{classifier_id}"
    kind = f"job.{state}"
    data = {
        "job_id": str(job_id),
        "dataset_id": str(job.dataset_id),
        "state": state,
        "error": job.error,
        "classifier_id": None if classifier_id is None else str(classifier_id),
        "links": links,
    }
    return job.tenant_id, kind, {"type": kind, "timestamp": iso(job.finished_at or utcnow()), "data": data}


@event.listens_for(Session, "before_commit")
def _write_outbox(session: Session) -> None:
    noted = session.info.pop(_KEY, None)
    if not noted:
        return
    rows = []
    for job_id, state in noted:
        tenant_id, kind, payload = job_payload(session, job_id, state)
        body = json.dumps(payload, separators=(",", ":"))
        for endpoint_id in repo.subscribers(session, tenant_id, kind):
            rows.append({"id": new_id(), "endpoint_id": endpoint_id, "event": kind, "payload": body})
    if not rows:
        return
    now = utcnow()
    session.execute(
        insert(WebhookDelivery),
        [
            r | {"status": "pending", "attempts": 0, "next_attempt_at": now, "queued_at": now, "created_at": now}
            for r in rows
        ],
    )

    def send_all(ids=tuple(r["id"] for r in rows)) -> None:
        for delivery_id in ids:
            delivery.send(delivery_id)

    after_commit(session, send_all)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_KEY, None)
