"""Job leases: whatever works on a job renews its heartbeat; training also holds the lease by owner.

A step runs inside :class:`Heartbeat`, a daemon thread that sets ``jobs.heartbeat_at`` every
``CANDOR_JOB_HEARTBEAT_SECONDS``. A killed worker stops renewing, so its job's heartbeat grows older
than ``CANDOR_JOB_LEASE_SECONDS`` and the reaper (:mod:`app.jobs.reaper`) drives the job on.

Training is fenced: it claims the job with an owner token, renews only while it still owns it and
stops (:class:`LeaseLost`) once the reaper has handed the job to a new delivery, so two trainers
never write the same job's checkpoint or results.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from app.core.db import TRANSIENT_DB_ERRORS, session_scope, utcnow
from app.core.settings import get_settings
from app.jobs import states
from app.jobs.models import Job

log = logging.getLogger("candor.leases")
LIVE = tuple(s for s in states.TRANSITIONS if s not in states.TERMINAL)


class LeaseLost(Exception):
    """The job was handed to another delivery (or finished) while this one worked on it."""


def new_owner() -> str:
    return uuid.uuid4().hex


def renew(session: Session, job_id: uuid.UUID, owner: str | None = None) -> bool:
    """Set the heartbeat of a live job (only while ``owner`` holds it, when given)."""
    stmt = update(Job).where(Job.id == job_id, Job.state.in_(LIVE))
    if owner is not None:
        stmt = stmt.where(Job.lease_owner == owner)
    stmt = stmt.values(heartbeat_at=utcnow()).execution_options(synchronize_session=False)
    return session.execute(stmt).rowcount == 1


def expired_before(now: datetime | None = None) -> datetime:
    """The heartbeat time before which a lease has expired."""
    return (now or utcnow()) - timedelta(seconds=get_settings().job_lease_seconds)


def expired(before: datetime):
    """The SQL condition "the job's lease expired" (no heartbeat, or one older than ``before``): the one
    test the reaper and a redelivered training step share."""
    return or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < before)


def claim_training(session: Session, job_id: uuid.UUID, owner: str) -> bool:
    """Take a training job unless another delivery holds a live lease on it."""
    now = utcnow()
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.state == states.TRAINING,
            or_(Job.lease_owner.is_(None), Job.lease_owner == owner, expired(expired_before(now))),
        )
        .values(lease_owner=owner, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).rowcount == 1


class Heartbeat:
    """A context manager: renews the job's heartbeat from a daemon thread while the body runs.

    With ``owner``, renewal stops the first time the job turns out to belong to someone else; the
    body sees that through :attr:`lost`. Database errors are logged and retried at the next beat:
    a short outage costs one beat, not the job.
    """

    def __init__(self, job_id: uuid.UUID, owner: str | None = None, interval: float | None = None):
        self.job_id = job_id
        self.owner = owner
        self.interval = get_settings().job_heartbeat_seconds if interval is None else interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def beat(self) -> None:
        try:
            with session_scope() as session:
                if not renew(session, self.job_id, self.owner) and self.owner is not None:
                    self.lost = True
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("job %s: heartbeat not written (%s)", self.job_id, type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and not self.lost:
            self.beat()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
