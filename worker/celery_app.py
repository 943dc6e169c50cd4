"""The Celery application: Redis broker, job state in the database, late acks, prefetch 1.

Queues: ``cpu`` (job start, featurisation chunks, the reaper; run as many workers as you like) and
``gpu`` (training; one worker per GPU, ``--pool solo`` so CUDA initialises in the process that uses
it). Every step is idempotent, so a message whose worker process was killed is put back on its
queue (``task_reject_on_worker_lost`` with late acks, as Celery documents for idempotent tasks);
a poison message is bounded by the per-chunk attempt count. ``candor beat`` sends the reaper task
every ``CANDOR_REAPER_INTERVAL_SECONDS`` and the webhook sweep (retries and lost deliveries) every
``CANDOR_WEBHOOK_SWEEP_SECONDS``; webhook deliveries run on ``cpu``.
"""

from __future__ import annotations

from celery import Celery

from app.core.settings import get_settings

settings = get_settings()
celery_app = Celery("candor", broker=settings.broker_url, include=["worker.tasks"])
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue="cpu",
    task_routes={"candor.train_job": {"queue": "gpu"}, "candor.*": {"queue": "cpu"}},
    broker_transport_options={"visibility_timeout": settings.visibility_timeout},
    broker_connection_retry_on_startup=True,
    # A send to a broker that is down fails within seconds instead of hanging the request that
    # made it; the job is in the database already and the reaper sends its step once Redis is back.
    broker_connection_timeout=2,
    task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    worker_hijack_root_logger=False,
    worker_max_tasks_per_child=50,
    beat_schedule={
        "reap-stale-jobs": {
            "task": "candor.reap_jobs",
            "schedule": settings.reaper_interval_seconds,
            "options": {"queue": "cpu", "expires": settings.reaper_interval_seconds},
        },
        "sweep-webhooks": {
            "task": "candor.sweep_webhooks",
            "schedule": settings.webhook_sweep_seconds,
            "options": {"queue": "cpu", "expires": settings.webhook_sweep_seconds},
        },
    },
)
