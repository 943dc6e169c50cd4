"""How job steps reach a worker: Celery messages, or an in-process thread in embedded mode.

Steps are only ever sent after the transaction that made them due has committed
(:func:`app.core.uow.after_commit`); the database, not the queue, holds the job's state. The reaper
asks a dispatcher which jobs still have a message waiting for a worker (:meth:`waiting_jobs`): such
a job is queued behind others, not lost.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Protocol

from app.core.settings import get_settings

log = logging.getLogger("candor.dispatch")

START, FEATURIZE, TRAIN = "candor.start_job", "candor.featurize_chunk", "candor.train_job"
REAP = "candor.reap_jobs"
DELIVER_WEBHOOK, SWEEP_WEBHOOKS = "candor.deliver_webhook", "candor.sweep_webhooks"
QUEUES = {START: "cpu", FEATURIZE: "cpu", TRAIN: "gpu", REAP: "cpu", DELIVER_WEBHOOK: "cpu", SWEEP_WEBHOOKS: "cpu"}
_SEP = "~"  # task ids are "<job id>~<random>", so a waiting message names its job


class Dispatcher(Protocol):
    def send(self, task: str, *args: str | int) -> None: ...

    def waiting_jobs(self) -> set[str]: ...


class CeleryDispatcher:
    def send(self, task, *args):
        from worker.celery_app import celery_app

        celery_app.send_task(task, args=list(args), queue=QUEUES[task], task_id=f"{args[0]}{_SEP}{uuid.uuid4().hex}")

    def waiting_jobs(self) -> set[str]:
        """Job ids with a message in a Redis queue list (sent, not yet taken by a worker). Messages
        taken but not acknowledged are not counted: the job's heartbeat tells whether their worker
        lives."""
        from worker.celery_app import celery_app

        found: set[str] = set()
        with celery_app.connection_for_read() as conn:
            channel = conn.default_channel
            client = channel.client
            for queue in {q for t, q in QUEUES.items() if t != REAP}:
                for priority in channel.priority_steps:
                    for raw in client.lrange(channel._q_for_pri(queue, priority), 0, -1):
                        task_id = json.loads(raw).get("headers", {}).get("id") or ""
                        if _SEP in task_id:
                            found.add(task_id.split(_SEP, 1)[0])
        return found


class InlineDispatcher:
    """Embedded mode: one background thread runs the steps in order, in this process."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candor-worker")
        # webhook requests wait on other servers: a thread of their own, never ahead of a job's steps
        self._webhooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candor-webhooks")
        self._waiting: Counter[str] = Counter()  # job id -> steps submitted, not yet started
        self._lock = threading.Lock()

    def send(self, task, *args):
        from app.jobs import pipeline

        if task == DELIVER_WEBHOOK:
            from app.webhooks import delivery

            self._webhooks.submit(self._run_webhook, delivery.deliver, *args)
            return

        fn: Callable = {START: pipeline.start_job, FEATURIZE: pipeline.featurize_chunk, TRAIN: pipeline.train_job}[task]
        with self._lock:
            self._waiting[str(args[0])] += 1
        self._pool.submit(self._run, fn, *args)

    def waiting_jobs(self) -> set[str]:
        with self._lock:
            return {job for job, n in self._waiting.items() if n > 0}

    def _run_webhook(self, fn, *args):
        try:
            fn(*args)
        except Exception:  # the delivery stays due: the next sweep sends it again
            log.exception("embedded webhook delivery %r failed", args)

    def _run(self, fn, *args):
        with self._lock:
            self._waiting[str(args[0])] -= 1
            self._waiting += Counter()  # drops the jobs with nothing left waiting
        try:
            fn(*args)
        except Exception:  # the pipeline records failures on the job; log anything else
            log.exception("embedded worker step %s%r failed", fn.__name__, args)


@lru_cache
def get_dispatcher() -> Dispatcher:
    return InlineDispatcher() if get_settings().embedded else CeleryDispatcher()


def send(task: str, job_id: uuid.UUID, *args: int) -> None:
    get_dispatcher().send(task, str(job_id), *args)
