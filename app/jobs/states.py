"""The job state machine. Every transition is one conditional UPDATE; terminal states are final."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.db import utcnow
from app.jobs.models import Job
from app.webhooks import events

QUEUED, FEATURIZING, TRAINING = "queued", "featurizing", "training"
SUCCEEDED, FAILED, CANCELLING, CANCELLED = "succeeded", "failed", "cancelling", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# from-state -> the states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({FEATURIZING, CANCELLED, FAILED}),
    FEATURIZING: frozenset({TRAINING, CANCELLING, FAILED}),
    TRAINING: frozenset({SUCCEEDED, CANCELLING, FAILED}),
    CANCELLING: frozenset({CANCELLED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def sources(to: str) -> list[str]:
    return [s for s, targets in TRANSITIONS.items() if to in targets]


def transition(
    session: Session,
    job_id: uuid.UUID,
    to: str,
    only_from: set[str] | None = None,
    owner: str | None = None,
    **values,
) -> bool:
    """Move a job to ``to`` if its current state allows it (and is in ``only_from`` when given, and
    the lease is held by ``owner`` when given). A transition also renews the job's heartbeat.

    Returns False when another writer got there first: zero rows matched.
    """
    allowed = sources(to)
    if only_from is not None:
        allowed = [s for s in allowed if s in only_from]
    now = utcnow()
    extra = {"finished_at": now} if to in TERMINAL else {}
    stmt = update(Job).where(Job.id == job_id, Job.state.in_(allowed))
    if owner is not None:
        stmt = stmt.where(Job.lease_owner == owner)
    stmt = stmt.values(state=to, updated_at=now, heartbeat_at=now, **extra, **values).execution_options(
        synchronize_session=False
    )
    return session.execute(stmt).rowcount == 1


def finish(
    session: Session, job_id: uuid.UUID, to: str, only_from: set[str] | None = None, owner: str | None = None, **values
) -> bool:
    """The one way into a terminal state (the API's cancel, the pipeline and the reaper all come
    through here): the transition, with the progress's stage set to the new state, and the event
    noted for the webhooks that want it."""
    if to not in TERMINAL:
        raise ValueError(f"{to} is not a terminal state")
    progress = session.scalar(select(Job.progress).where(Job.id == job_id)) or {}
    moved = transition(session, job_id, to, only_from, owner, progress={**progress, "stage": to}, **values)
    if moved:
        events.job_finished(session, job_id, to)  # webhooks, written with this transaction
    return moved
