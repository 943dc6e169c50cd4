"""How job steps reach a worker: Celery messages, or an in-process thread in embedded mode.

Steps are only ever sent after the transaction that made them due has committed
(:func:`app.core.uow.after_commit`); the database, not the queue, holds the job's state.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Protocol

from app.core.settings import get_settings

log = logging.getLogger("candor.dispatch")

START, FEATURIZE, TRAIN = "candor.start_job", "candor.featurize_chunk", "candor.train_job"
QUEUES = {START: "cpu", FEATURIZE: "cpu", TRAIN: "gpu"}


class Dispatcher(Protocol):
    def send(self, task: str, *args: str | int) -> None: ...


class CeleryDispatcher:
    def send(self, task, *args):
        from worker.celery_app import celery_app

        celery_app.send_task(task, args=list(args), queue=QUEUES[task])


class InlineDispatcher:
    """Embedded mode: one background thread runs the steps in order, in this process."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candor-worker")
        self.idle = threading.Event()
        self.idle.set()
        self._pending = 0
        self._lock = threading.Lock()

    def send(self, task, *args):
        from app.jobs import pipeline

        fn: Callable = {START: pipeline.start_job, FEATURIZE: pipeline.featurize_chunk, TRAIN: pipeline.train_job}[task]
        with self._lock:
            self._pending += 1
            self.idle.clear()
        self._pool.submit(self._run, fn, *args)

    def _run(self, fn, *args):
        try:
            fn(*args)
        except Exception:  # the pipeline records failures on the job; log anything else
            log.exception("embedded worker step %s%r failed", fn.__name__, args)
        finally:
            with self._lock:
                self._pending -= 1
                if self._pending == 0:
                    self.idle.set()


@lru_cache
def get_dispatcher() -> Dispatcher:
    return InlineDispatcher() if get_settings().embedded else CeleryDispatcher()


def send(task: str, job_id: uuid.UUID, *args: int) -> None:
    get_dispatcher().send(task, str(job_id), *args)
