"""Fault scenarios on real processes, shared by the fault tests and ``bench/faults.py``.

A :class:`Deployment` is what production runs, on loopback: a PostgreSQL cluster and a Redis of its
own (never the machine's shared ones), ``candor serve``, a CPU worker (prefork, one child), a GPU
worker (solo pool) and ``candor beat``, all real processes with short leases so that each fault is
over in seconds. Each scenario injects one fault into a running job and returns a :class:`Outcome`:
the final state, how long recovery took, how many items came back without a label and how many
labels differ from an uninterrupted run of the same job (same seed).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from sqlalchemy import create_engine, text

from tests.servers import PrivatePostgres, PrivateRedis, free_port

CANDOR = [str(Path(sys.executable).with_name("candor"))]
CLASSES = ["circle", "square", "triangle"]
LEASE = 5.0  # seconds; the production default is 60
ENV = {
    "CANDOR_JOB_HEARTBEAT_SECONDS": "0.5",
    "CANDOR_JOB_LEASE_SECONDS": str(LEASE),
    "CANDOR_REAPER_INTERVAL_SECONDS": "1",
    "CANDOR_DB_RETRY_SECONDS": "60",
    "CANDOR_PROGRESS_INTERVAL": "0.2",
    "CANDOR_FEATURE_CHUNK_SIZE": "50",
    "CANDOR_EMBEDDED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# Large, flat images: cheap to send (they compress to a few KB), slow enough to decode that a chunk
# takes a second or so, which leaves room to kill its worker while it runs.
IMAGE_SIDE = 900


def config(epochs: int) -> dict:
    return {
        "backbone": "tiny",
        "prompt": {"n_ctx": 4},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01, "seed": 7},
        "features": {"batch_size": 16},
    }


def image(k: int) -> bytes:
    """A distinct image per k: a shape (its class) on a background of its own colour."""
    img = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256))
    draw = ImageDraw.Draw(img)
    box = (IMAGE_SIDE // 4, IMAGE_SIDE // 4, 3 * IMAGE_SIDE // 4, 3 * IMAGE_SIDE // 4)
    shape = k % 3
    if shape == 0:
        draw.ellipse(box, fill=(255, 255, 255))
    elif shape == 1:
        draw.rectangle(box, fill=(255, 255, 255))
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def dataset_zip(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        lines = []
        for k in range(n):
            zf.writestr(f"img/{k}.png", image(k))
            cands = [CLASSES[k % 3], CLASSES[(k + 1) % 3]]
            lines.append(json.dumps({"id": f"item-{k}", "image": f"img/{k}.png", "candidates": cands}))
        zf.writestr("manifest.jsonl", "\n".join(lines) + "\n")
    return buf.getvalue()


@dataclass
class Outcome:
    fault: str
    state: str
    recovery_seconds: float | None  # fault injected -> the job progressing again (or finished)
    items: int
    items_lost: int
    labels_differing: int | None
    attempts: int
    notes: str = ""


@dataclass
class Deployment:
    """The service's processes on a private PostgreSQL and Redis; start with ``with``."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="candor-faults-")))
    n_items: int = 200

    def __post_init__(self):
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis()
        self.procs: dict[str, subprocess.Popen] = {}
        self.references: dict[int, dict[str, str]] = {}

    # processes -----------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        return os.environ | ENV | {"CANDOR_DATABASE_URL": self.pg.url, "CANDOR_BROKER_URL": self.redis.url}

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*CANDOR, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_cpu_worker(self) -> None:
        self.spawn("cpu", "worker", "--queues", "cpu", "--concurrency", "1", "--log-level", "warning")

    def start_gpu_worker(self) -> None:
        self.spawn("gpu", "worker", "--queues", "gpu", "--log-level", "warning")

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill9(self, name: str) -> None:
        self.stop(name, signal.SIGKILL)

    def pool_children(self, name: str) -> list[int]:
        pid = self.procs[name].pid
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def __enter__(self) -> Deployment:
        self.pg.start()
        self.redis.start()
        env = self.env
        subprocess.run([*CANDOR, "db", "upgrade"], env=env, check=True, capture_output=True)
        out = subprocess.run([*CANDOR, "keys", "create", "--tenant", "f"], env=env, check=True, capture_output=True)
        self.key = out.stdout.decode().strip().splitlines()[-1]
        self.port = free_port()
        self.spawn("api", "serve", "--port", str(self.port), "--no-migrate", "--log-level", "warning")
        self.start_cpu_worker()
        self.start_gpu_worker()
        self.spawn("beat", "beat", "--log-level", "warning")
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )
        self.until(lambda: self._ready(), 90, "the API to answer /readyz")
        self.db = create_engine(self.pg.url, pool_pre_ping=True)
        r = self.http.post("/v1/datasets", json={"name": "faults", "classes": CLASSES})
        self.dataset = r.json()["id"]
        r = self.http.post(
            f"/v1/datasets/{self.dataset}/imports",
            content=dataset_zip(self.n_items),
            headers={"Content-Type": "application/zip"},
        )
        assert r.status_code == 201, r.text
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.http.close()
        self.db.dispose()
        self.redis.close()
        self.pg.close()

    def _ready(self) -> bool:
        if self.procs["api"].poll() is not None:
            raise RuntimeError(f"candor serve exited; see {self.workdir / 'api.log'}")
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    # jobs -----------------------------------------------------------------------------------
    @staticmethod
    def until(cond: Callable[[], object], timeout: float, what: str, every: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = cond()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def submit(self, epochs: int, fresh_features: bool = False) -> str:
        if fresh_features:  # make featurisation run again for this job
            with self.db.begin() as conn:
                conn.execute(text("DELETE FROM features"))
        r = self.http.post("/v1/jobs", json={"dataset_id": self.dataset, "config": config(epochs)})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def queued(self, queue: str, job_id: str) -> bool:
        """Whether a message for the job waits in the queue's Redis list."""
        import redis

        with redis.Redis.from_url(self.redis.url) as client:
            return any(job_id.encode() in raw for raw in client.lrange(queue, 0, -1))

    def row(self, job_id: str):
        with self.db.connect() as conn:
            return conn.execute(
                text("SELECT state, attempt, heartbeat_at, checkpoint_meta, progress FROM jobs WHERE id = :id"),
                {"id": job_id},
            ).one()

    def wait_terminal(self, job_id: str, timeout: float = 240) -> dict:
        def done():
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        return self.until(done, timeout, f"job {job_id} to finish", every=0.2)

    def labels(self, job_id: str) -> dict[str, str]:
        r = self.http.get(f"/v1/jobs/{job_id}/labels")
        return {row["id"]: row["label"] for row in map(json.loads, r.text.splitlines())}

    def reference(self, epochs: int) -> dict[str, str]:
        """Labels of an uninterrupted run of the same job: what every recovered job must return."""
        if epochs not in self.references:
            job = self.wait_terminal(self.submit(epochs))
            assert job["state"] == "succeeded", job
            self.references[epochs] = self.labels(job["id"])
        return self.references[epochs]

    def outcome(self, fault: str, job_id: str, injected: float, recovered: float | None, epochs: int, notes=""):
        job = self.wait_terminal(job_id)
        labels = self.labels(job_id) if job["state"] == "succeeded" else {}
        ref = self.reference(epochs) if job["state"] == "succeeded" else None
        return Outcome(
            fault=fault,
            state=job["state"],
            recovery_seconds=None if recovered is None else round(recovered - injected, 1),
            items=self.n_items,
            items_lost=self.n_items - len(labels) if job["state"] == "succeeded" else self.n_items,
            labels_differing=None if ref is None else sum(labels.get(k) != v for k, v in ref.items()),
            attempts=job["attempt"],
            notes=notes,
        )

    def progressing_after(self, job_id: str, t: float, timeout: float) -> float:
        """When the job next showed life after monotonic time ``t``: a heartbeat or a terminal state."""
        from datetime import UTC, datetime, timedelta

        wall = datetime.now(UTC) - timedelta(seconds=time.monotonic() - t)

        def alive():
            row = self.row(job_id)
            return row.state in ("succeeded", "failed", "cancelled") or (row.heartbeat_at and row.heartbeat_at > wall)

        self.until(alive, timeout, f"job {job_id} to show life again", every=0.1)
        return time.monotonic()

    def wait_epoch(self, job_id: str, epoch: int, timeout: float = 120) -> None:
        def reached():
            row = self.row(job_id)
            assert row.state not in ("failed", "cancelled"), row
            return row.checkpoint_meta and row.checkpoint_meta.get("epoch", 0) >= epoch

        self.until(reached, timeout, f"job {job_id} to checkpoint epoch {epoch}")


# scenarios --------------------------------------------------------------------------------------
TRAIN_EPOCHS = 12
SHORT_EPOCHS = 3


def kill_training_worker(d: Deployment) -> Outcome:
    """kill -9 of the training worker mid-training; a supervisor starts a new one."""
    d.reference(TRAIN_EPOCHS)
    job = d.submit(TRAIN_EPOCHS)
    d.wait_epoch(job, 3)
    d.kill9("gpu")
    t = time.monotonic()
    d.start_gpu_worker()
    time.sleep(LEASE / 2)  # the dead worker's lease must run out first
    recovered = d.progressing_after(job, t + LEASE / 2, LEASE + 60)
    return d.outcome("kill -9 of the training worker", job, t, recovered, TRAIN_EPOCHS)


def cancel_after_worker_died(d: Deployment) -> Outcome:
    """kill -9 of the training worker, then a cancel that no worker is left to carry out."""
    job = d.submit(TRAIN_EPOCHS)
    d.wait_epoch(job, 2)
    d.kill9("gpu")
    t = time.monotonic()
    assert d.http.post(f"/v1/jobs/{job}/cancel").json()["state"] == "cancelling"
    final = d.wait_terminal(job, LEASE + 30)
    recovered = time.monotonic()
    d.start_gpu_worker()
    out = d.outcome("cancel after the training worker died", job, t, recovered, TRAIN_EPOCHS)
    assert final["state"] == "cancelled", final
    return out


def kill_cpu_pool_child(d: Deployment) -> Outcome:
    """kill -9 of the CPU worker's pool child while it featurises a chunk (what the OOM killer does)."""
    job = d.submit(SHORT_EPOCHS, fresh_features=True)

    def chunk_running():
        with d.db.connect() as conn:
            return conn.execute(
                text("SELECT 1 FROM job_chunks WHERE job_id = :id AND attempts >= 1 AND NOT done"), {"id": job}
            ).first()

    d.until(chunk_running, 60, "a featurisation chunk to start", every=0.02)
    children = d.pool_children("cpu")
    assert children, "the CPU worker has no pool child"
    os.kill(children[0], signal.SIGKILL)
    t = time.monotonic()
    recovered = d.progressing_after(job, t, LEASE + 60)
    return d.outcome("kill -9 of a CPU pool child mid-chunk", job, t, recovered, SHORT_EPOCHS)


def redis_restart_with_job_queued(d: Deployment) -> Outcome:
    """A job queued (no CPU worker running) when Redis restarts without persistence: its message is gone."""
    d.stop("cpu")
    job = d.submit(SHORT_EPOCHS)
    d.until(lambda: d.queued("cpu", job), 10, "the start message to wait in Redis")
    d.redis.restart()
    t = time.monotonic()
    d.start_cpu_worker()
    recovered = d.progressing_after(job, t + 0.5, LEASE + 60)
    return d.outcome("Redis restarted (no persistence) with a job queued", job, t, recovered, SHORT_EPOCHS)


def submit_while_redis_down(d: Deployment) -> Outcome:
    """POST /v1/jobs while Redis is down: 202, the start message cannot be sent; Redis comes back."""
    d.redis.stop()
    try:
        job = d.submit(SHORT_EPOCHS)
    finally:
        d.redis.start()
    t = time.monotonic()
    recovered = d.progressing_after(job, t + 0.5, LEASE + 60)
    return d.outcome("job submitted while Redis was down", job, t, recovered, SHORT_EPOCHS)


def postgres_restart_during_training(d: Deployment, down_seconds: float = 2.0, crash: bool = False) -> Outcome:
    """PostgreSQL stopped (or killed: ``crash``) for a while during training, then started again."""
    d.reference(TRAIN_EPOCHS)
    job = d.submit(TRAIN_EPOCHS)
    d.wait_epoch(job, 3)
    d.pg.kill() if crash else d.pg.stop()
    t = time.monotonic()
    time.sleep(down_seconds)
    d.pg.start()
    recovered = d.progressing_after(job, time.monotonic(), LEASE + 60)
    how = "killed (-9)" if crash else "down"
    return d.outcome(f"PostgreSQL {how} {down_seconds:g} s during training", job, t, recovered, TRAIN_EPOCHS)


SCENARIOS: dict[str, Callable[[Deployment], Outcome]] = {
    "kill_training_worker": kill_training_worker,
    "cancel_after_worker_died": cancel_after_worker_died,
    "kill_cpu_pool_child": kill_cpu_pool_child,
    "redis_restart_with_job_queued": redis_restart_with_job_queued,
    "submit_while_redis_down": submit_while_redis_down,
    "postgres_restart_during_training": postgres_restart_during_training,
    "postgres_down_10s_during_training": lambda d: postgres_restart_during_training(d, 10.0),
    "postgres_killed_during_training": lambda d: postgres_restart_during_training(d, 1.0, crash=True),
}
