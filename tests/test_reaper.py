"""Leases and the reaper on the real database: each kind of stale job, the race, the broker check."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import OperationalError

from app.core.db import retry_db, session_scope, utcnow
from app.core.settings import get_settings
from app.jobs import dispatch, leases, reaper, states
from app.jobs.models import Job

TABLES = "job_results, classifiers, job_chunks, jobs, features, items, images, datasets, api_keys, tenants"


@pytest.fixture
def committed(database):
    yield database
    with database.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


def make_job(state: str, stale: bool = True, attempt: int = 1) -> uuid.UUID:
    from app.core.security import create_key
    from app.datasets.models import Dataset

    lease = get_settings().job_lease_seconds
    with session_scope() as s:
        tenant, _ = create_key(s, f"t-{uuid.uuid4().hex[:8]}")
        ds = Dataset(tenant_id=tenant.id, name="d", classes=["a", "b"])
        s.add(ds)
        s.flush()
        job = Job(
            tenant_id=tenant.id, dataset_id=ds.id, state=state, config={}, config_hash="x", attempt=attempt,
            heartbeat_at=utcnow() - timedelta(seconds=lease + 5 if stale else 1), progress={"stage": state},
        )  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


def job(job_id: uuid.UUID) -> Job:
    with session_scope() as s:
        return s.get(Job, job_id)


def test_orphaned_jobs_are_sent_again_with_the_step_they_need(committed, dispatcher):
    queued, featurizing, training = make_job("queued"), make_job("featurizing"), make_job("training")
    done = {(r.job_id, r.action) for r in reaper.reap()}
    assert done == {(queued, "redriven"), (featurizing, "redriven"), (training, "redriven")}
    assert sorted(dispatcher.sent) == sorted(
        [(dispatch.START, str(queued)), (dispatch.START, str(featurizing)), (dispatch.TRAIN, str(training))]
    )
    for j in (queued, featurizing, training):
        row = job(j)
        assert row.attempt == 2 and row.lease_owner is None
        assert utcnow() - row.heartbeat_at < timedelta(seconds=5)  # a fresh lease for the new delivery
    assert reaper.reap() == []  # nothing stale any more


def test_live_and_terminal_jobs_are_left_alone(committed, dispatcher):
    fresh = make_job("training", stale=False)
    finished = make_job("succeeded")
    assert reaper.reap() == []
    assert dispatcher.sent == [] and job(fresh).attempt == 1 and job(finished).state == "succeeded"


def test_a_job_waiting_behind_others_in_its_queue_keeps_its_attempts(committed, dispatcher):
    waiting = make_job("training")
    dispatcher.waiting.add(str(waiting))
    assert [(r.job_id, r.action) for r in reaper.reap()] == [(waiting, "waiting")]
    row = job(waiting)
    assert dispatcher.sent == [] and row.attempt == 1 and row.state == "training"
    assert utcnow() - row.heartbeat_at < timedelta(seconds=5)


def test_a_cancel_whose_worker_is_gone_is_finished(committed, dispatcher):
    cancelling = make_job("cancelling")
    assert [(r.job_id, r.action) for r in reaper.reap()] == [(cancelling, "cancelled")]
    row = job(cancelling)
    assert row.state == "cancelled" and row.finished_at is not None and row.progress["stage"] == "cancelled"


def test_past_the_attempt_limit_the_job_fails_and_says_why(committed, dispatcher):
    limit = get_settings().job_max_attempts
    spent = make_job("featurizing", attempt=limit)
    assert [(r.job_id, r.action) for r in reaper.reap()] == [(spent, "failed")]
    row = job(spent)
    assert row.state == "failed" and dispatcher.sent == []
    assert f"after {limit} deliveries" in row.error and "CANDOR_JOB_MAX_ATTEMPTS" in row.error


def test_two_reapers_never_act_twice_on_one_job(committed, dispatcher):
    j = make_job("queued")
    before = utcnow() - timedelta(seconds=get_settings().job_lease_seconds)
    with session_scope() as a:
        first = reaper._drive(a, j, "queued", 1, False, before)
    with session_scope() as b:
        second = reaper._drive(b, j, "queued", 1, False, before)
    assert (first, second) == ("redriven", None)
    assert dispatcher.sent == [(dispatch.START, str(j))] and job(j).attempt == 2


def test_heartbeat_renews_and_fencing_stops_a_replaced_owner(committed):
    j = make_job("training")
    owner = leases.new_owner()
    with session_scope() as s:
        assert leases.claim_training(s, j, owner)
    with session_scope() as s:  # a live lease refuses a second claimant
        assert not leases.claim_training(s, j, leases.new_owner())
    stale_before = job(j).heartbeat_at
    with leases.Heartbeat(j, owner, interval=0.05) as beat:
        time.sleep(0.3)
        assert job(j).heartbeat_at > stale_before and not beat.lost
        with session_scope() as s:  # the reaper hands the job over
            s.execute(update(Job).where(Job.id == j).values(lease_owner=None))
        time.sleep(0.3)
        assert beat.lost


def test_celery_dispatcher_sees_messages_that_wait_in_redis(committed):
    """A message sent to a queue nobody consumes is 'waiting'; a consumed one is not."""
    import redis

    redis.Redis.from_url(get_settings().broker_url).flushdb()
    d = dispatch.CeleryDispatcher()
    j = uuid.uuid4()
    d.send(dispatch.TRAIN, str(j))
    assert str(j) in d.waiting_jobs()
    redis.Redis.from_url(get_settings().broker_url).flushdb()
    assert str(j) not in d.waiting_jobs()


def test_retry_db_rides_out_a_short_outage_and_gives_up_after_its_budget():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return "ok"

    assert retry_db(flaky, budget=10) == "ok" and len(calls) == 3

    def down():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    start = time.monotonic()
    with pytest.raises(OperationalError):
        retry_db(down, budget=1.2)
    assert 0.9 < time.monotonic() - start < 5
    with pytest.raises(ZeroDivisionError):  # not a database outage: no retry
        retry_db(lambda: 1 / 0, budget=10)


def test_state_changes_renew_the_heartbeat(committed):
    j = make_job("queued")
    with session_scope() as s:
        assert states.transition(s, j, states.FEATURIZING)
    assert utcnow() - job(j).heartbeat_at < timedelta(seconds=5)


def test_the_embedded_thread_runs_the_reaper_and_the_sweep_each_at_its_own_interval(monkeypatch):
    from app.core.settings import get_settings
    from app.jobs import reaper
    from app.webhooks import delivery

    monkeypatch.setattr(get_settings(), "reaper_interval_seconds", 0.05)
    monkeypatch.setattr(get_settings(), "webhook_sweep_seconds", 0.4)
    runs = {"reaper": 0, "sweep": 0}
    monkeypatch.setattr(reaper, "reap", lambda: runs.__setitem__("reaper", runs["reaper"] + 1))
    monkeypatch.setattr(delivery, "sweep", lambda: runs.__setitem__("sweep", runs["sweep"] + 1))
    thread = reaper.ReaperThread()
    thread.start()
    time.sleep(1.0)
    thread.stop()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert 1 <= runs["sweep"] <= 3  # about every 0.4 s
    assert runs["reaper"] >= 4 * runs["sweep"]  # about every 0.05 s
