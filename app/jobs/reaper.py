"""The reaper: drives on every live job whose lease has expired, so no job is ever stuck.

A job's heartbeat is renewed by whatever works on it (:mod:`app.jobs.leases`) and by every state
change. When it is older than ``CANDOR_JOB_LEASE_SECONDS``, the job is one of:

- still waiting for a worker: its message sits in a queue behind others; the lease is renewed;
- ``cancelling`` with no worker left to finish the cancel: it is cancelled now;
- orphaned: its message was lost (a broker restart without persistence, a failed send at
  submission) or its worker died (kill -9, out-of-memory, a database outage longer than the retry
  budget). The step is sent again — steps are idempotent and training resumes from its last
  checkpoint — and ``attempt`` counts it; past ``CANDOR_JOB_MAX_ATTEMPTS`` the job fails with a
  message that says so.

Each action starts with a conditional UPDATE on the stale heartbeat, so reapers running at the same
time never act twice on one job. It runs as a Celery beat task on the ``cpu`` queue (``candor
beat``), and as a thread in embedded mode.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.db import session_scope, utcnow
from app.core.settings import get_settings
from app.core.uow import after_commit
from app.jobs import dispatch, states
from app.jobs.leases import LIVE, expired, expired_before
from app.jobs.models import Job

log = logging.getLogger("candor.reaper")
BATCH = 200  # stale jobs handled per run; the next run takes the rest


@dataclass(frozen=True)
class Reaped:
    job_id: uuid.UUID
    state: str
    action: str  # waiting | cancelled | redriven | failed


def reap(now: datetime | None = None) -> list[Reaped]:
    """One pass over the live jobs whose lease expired; returns what was done to each."""
    before = expired_before(now)
    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.state, Job.attempt)
            .where(Job.state.in_(LIVE), expired(before))
            .order_by(Job.heartbeat_at)
            .limit(BATCH)
        ).all()
    if not rows:
        return []
    try:
        waiting = dispatch.get_dispatcher().waiting_jobs()
    except Exception as exc:  # the broker is down: nothing could be sent now anyway
        log.warning("reaper: cannot read the queues (%s); %d stale jobs wait for the next run", exc, len(rows))
        return []
    done = []
    for job_id, state, attempt in rows:
        with session_scope() as session:
            action = _drive(session, job_id, state, attempt, str(job_id) in waiting, before)
        if action is not None:
            log.info("reaper: job %s (%s, attempt %d): %s", job_id, state, attempt, action)
            done.append(Reaped(job_id, state, action))
    return done


def _drive(session: Session, job_id: uuid.UUID, state: str, attempt: int, waiting: bool, before: datetime):
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == state, expired(before))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    if not claimed:
        return None  # renewed meanwhile, or another reaper took it
    if state == states.CANCELLING:
        states.finish(session, job_id, states.CANCELLED)
        return "cancelled"
    if waiting:
        return "waiting"
    settings = get_settings()
    if attempt >= settings.job_max_attempts:
        error = (
            f"no worker renewed the job's lease for {settings.job_lease_seconds:g} s while it was {state}, "
            f"after {attempt} deliveries; giving up (CANDOR_JOB_MAX_ATTEMPTS={settings.job_max_attempts})"
        )
        states.finish(session, job_id, states.FAILED, error=error)
        return "failed"
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(attempt=Job.attempt + 1, lease_owner=None)
        .execution_options(synchronize_session=False)
    )
    task = dispatch.TRAIN if state == states.TRAINING else dispatch.START
    after_commit(session, lambda: dispatch.send(task, job_id))
    return "redriven"


class ReaperThread(threading.Thread):
    """Embedded mode: the reaper (every ``CANDOR_REAPER_INTERVAL_SECONDS``) and the webhook sweep
    (every ``CANDOR_WEBHOOK_SWEEP_SECONDS``), which ``candor beat`` runs otherwise, in a daemon thread
    of the API process. ``interval`` sets both, for tests."""

    def __init__(self, interval: float | None = None):
        super().__init__(name="candor-reaper", daemon=True)
        settings = get_settings()
        self.intervals = {
            "reaper": settings.reaper_interval_seconds if interval is None else interval,
            "webhook sweep": settings.webhook_sweep_seconds if interval is None else interval,
        }
        self.stopped = threading.Event()

    def run(self) -> None:
        from app.webhooks import delivery

        tasks = {"reaper": reap, "webhook sweep": delivery.sweep}
        due = {name: time.monotonic() + self.intervals[name] for name in tasks}
        while not self.stopped.wait(max(0.0, min(due.values()) - time.monotonic())):
            for name, fn in tasks.items():
                if time.monotonic() < due[name]:
                    continue
                due[name] = time.monotonic() + self.intervals[name]
                try:
                    fn()
                except Exception:  # a database outage: try again at the next interval
                    log.exception("%s run failed", name)

    def stop(self) -> None:
        self.stopped.set()
