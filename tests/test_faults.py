"""Faults injected into running jobs on real processes: every job ends, nothing is lost.

One deployment (private PostgreSQL and Redis, `candor serve`, a CPU worker, a GPU worker, `candor
beat`, leases of 5 s) serves every case in turn; see tests/faults.py. Each case asserts the final
state, that every item has its label, that the labels equal an uninterrupted run of the same job,
and that recovery came within the lease plus a margin for a worker to start.
"""

from __future__ import annotations

import pytest

from tests import faults

# A new worker process imports torch and loads its backbone: allow for that on a busy 2-core machine.
MARGIN = 40.0


@pytest.fixture(scope="module")
def deployment():
    with faults.Deployment() as d:
        yield d


def assert_recovered(out: faults.Outcome, state: str = "succeeded") -> None:
    assert out.state == state, out
    assert out.recovery_seconds is not None and out.recovery_seconds <= faults.LEASE + MARGIN, out
    if state == "succeeded":
        assert out.items_lost == 0 and out.labels_differing == 0, out


def test_training_worker_killed_resumes_from_its_checkpoint(deployment):
    out = faults.kill_training_worker(deployment)
    assert_recovered(out)
    assert out.attempts == 2  # the reaper handed the job to the new worker once


def test_cancel_after_the_training_worker_died_is_finished_by_the_reaper(deployment):
    out = faults.cancel_after_worker_died(deployment)
    assert_recovered(out, state="cancelled")


def test_cpu_pool_child_killed_mid_chunk_requeues_its_chunk(deployment):
    out = faults.kill_cpu_pool_child(deployment)
    assert_recovered(out)


def test_redis_restart_with_a_job_queued_loses_no_job(deployment):
    out = faults.redis_restart_with_job_queued(deployment)
    assert_recovered(out)
    assert out.attempts == 2


def test_job_submitted_while_redis_is_down_runs_once_it_is_back(deployment):
    out = faults.submit_while_redis_down(deployment)
    assert_recovered(out)
    assert out.attempts == 2


def test_postgres_restarted_during_training_the_job_runs_through(deployment):
    out = faults.postgres_restart_during_training(deployment)
    assert_recovered(out)
    assert out.attempts == 1  # rode out the outage: no re-delivery needed
