"""A real Candor service for the client tests: `candor serve` as a subprocess on the test
PostgreSQL database, an in-process Celery worker on the test Redis database, API keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.servers import free_port

CANDOR = str(Path(sys.executable).with_name("candor"))
# a tiny, fast job: the test backbone, three epochs
JOB_CONFIG = {
    "backbone": "tiny",
    "prompt": {"n_ctx": 4},
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.01},
    "features": {"batch_size": 4},
}


def serve(env: dict[str, str], log: Path, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """Start `candor serve` with ``env``; return the process and its base URL once /healthz answers."""
    port = free_port()
    cmd = [CANDOR, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate", "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"candor serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serving(database, tmp_path_factory, **env: str):
    """`candor serve` on the test database with ``env`` added, yielding its base URL; every table is
    emptied when it stops (the body of a module-scoped fixture)."""
    from app.core import registry

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, base = serve(os.environ | {"CANDOR_EMBEDDED": "0"} | env, log)
    try:
        yield base
    finally:
        stop(proc)
        registry.classifiers.clear()
        with database.begin() as conn:
            tables = conn.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
            ).all()
            conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))


@pytest.fixture(scope="module")
def service_url(database, tmp_path_factory):
    """`candor serve` on the test database; every table is emptied when the module is done."""
    yield from serving(database, tmp_path_factory)


@pytest.fixture(scope="module")
def celery_worker(database):
    """An embedded Celery worker (solo pool, in a thread) on the test Redis database."""
    import redis
    from celery.contrib.testing.worker import start_worker

    from app.core.settings import get_settings
    from worker.celery_app import celery_app

    redis.Redis.from_url(get_settings().broker_url).flushdb()
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, queues=["cpu", "gpu"], shutdown_timeout=30
    ) as w:
        yield w


def new_key(tenant: str | None = None) -> str:
    """A fresh API key of a new tenant in the test database."""
    from app.core.db import session_scope
    from app.core.security import create_key

    with session_scope() as s:
        _, key = create_key(s, tenant or f"tenant-{uuid.uuid4().hex[:8]}")
    return key
