"""Bounded load run: concurrent clients on the list routes and /predict of a real `candor serve`.

Creates a PostgreSQL database of its own, seeds one tenant through the service code (datasets, a
dataset of 1,000 items, 21 jobs, one classifier trained in this process on the `tiny` backbone),
starts `candor serve` (one uvicorn process, the only mode `candor serve` has) and runs two phases
of --seconds each with --clients concurrent clients (httpx.AsyncClient, one connection each):

1. ``base``: the tenant as seeded (5 datasets of 3-10 classes);
2. ``wide``: the same tenant after 50 more datasets of 2,000 classes each were added.

Every client cycles through the five routes — GET /v1/datasets, /v1/jobs, /v1/classifiers, a page
of /v1/datasets/{id}/items (following next_cursor, from the start again at the end) and POST
/v1/classifiers/{id}/predict (one 32x32 PNG) — and the script prints, per phase and route, the
requests, errors (anything but a 2xx, or no answer), p50 and p99 latency and the mean response
size, as a Markdown table. Exit status 1 when any request failed.

Usage: python bench/load.py [--seconds 60] [--clients 50]
Needs PostgreSQL and Redis on 127.0.0.1 (CANDOR_BENCH_PG, CANDOR_BENCH_REDIS override them).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG = os.environ.get("CANDOR_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS = os.environ.get("CANDOR_BENCH_REDIS", "redis://127.0.0.1:6379/14")
ROUTES = ("datasets", "jobs", "classifiers", "items", "predict")
TRAIN_CONFIG = {
    "backbone": "tiny",
    "prompt": {"n_ctx": 4},
    "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "seed": 0},
    "features": {"batch_size": 8},
}


def png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class RunNow:
    """A dispatcher that keeps the messages a commit sends, for the seeding to run or drop."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def send(self, task, *args):
        self.sent.append((task, *args))

    def waiting_jobs(self) -> set[str]:
        return {str(m[1]) for m in self.sent}

    def run_all(self) -> None:
        from app.jobs import dispatch, pipeline

        steps = {dispatch.START: pipeline.start_job, dispatch.FEATURIZE: pipeline.featurize_chunk}
        steps[dispatch.TRAIN] = pipeline.train_job
        while self.sent:
            task, *args = self.sent.pop(0)
            steps[task](*args)


def add_items(session, tenant, ds, first: int, n: int, classes: list[str]) -> None:
    from app.datasets import service
    from app.datasets.schemas import ItemsBatch

    for start in range(first, first + n, 500):
        items = [
            {
                "id": f"item-{i}",
                "image_base64": base64.b64encode(png(i)).decode(),
                "candidates": [classes[i % len(classes)], classes[(i + 1) % len(classes)]],
            }
            for i in range(start, min(start + 500, first + n))
        ]
        batch = ItemsBatch.model_validate({"items": items})
        service.ingest(session, tenant, ds, service.incoming_from_json(batch.items))
        session.commit()


def seed(tenant_name: str) -> dict:
    """The base tenant, through the service code; returns its key and the ids the clients use."""
    from app.core.db import get_sessionmaker
    from app.core.security import TenantRef, create_key
    from app.datasets import service as datasets
    from app.datasets.schemas import DatasetCreate
    from app.jobs import dispatch
    from app.jobs import service as jobs
    from app.jobs.schemas import JobCreate

    runner = RunNow()
    dispatch.get_dispatcher = lambda: runner
    with get_sessionmaker()() as s:
        row, key = create_key(s, tenant_name)
        s.commit()
        tenant = TenantRef(id=row.id, name=tenant_name)
        animals = ["cat", "dog", "bird"]
        small = datasets.create_dataset(s, tenant, DatasetCreate(name="animals", classes=animals))
        add_items(s, tenant, small, 0, 24, animals)
        job = jobs.create_job(s, tenant, JobCreate.model_validate({"dataset_id": small.id, "config": TRAIN_CONFIG}))
        s.commit()
        runner.run_all()  # start, featurise, train: the classifier /predict uses
        s.expire_all()
        trained = jobs.job_out(s, jobs.require_job(s, tenant, job.id))
        if trained.classifier_id is None:
            raise SystemExit(f"seeding: the training job ended {trained.state}: {trained.error}")
        for _ in range(20):  # queued jobs for the job list; nothing runs them
            jobs.create_job(s, tenant, JobCreate.model_validate({"dataset_id": small.id, "config": TRAIN_CONFIG}))
            s.commit()
            runner.sent.clear()
        ten = [f"class-{k}" for k in range(10)]
        paged = datasets.create_dataset(s, tenant, DatasetCreate(name="pages", classes=ten))
        add_items(s, tenant, paged, 1000, 1000, ten)
        for k in range(3):
            datasets.create_dataset(s, tenant, DatasetCreate(name=f"small-{k}", classes=ten[: 4 + k]))
        s.commit()
        return {"key": key, "tenant": tenant, "classifier": str(trained.classifier_id), "items_dataset": str(paged.id)}


def widen(tenant, n: int = 50, classes: int = 2000) -> None:
    """n more datasets of ``classes`` classes each for the tenant."""
    from app.core.db import get_sessionmaker
    from app.datasets import service as datasets
    from app.datasets.schemas import DatasetCreate

    with get_sessionmaker()() as s:
        for d in range(n):
            names = [f"d{d}-class-{k}" for k in range(classes)]
            datasets.create_dataset(s, tenant, DatasetCreate(name=f"wide-{d}", classes=names))
        s.commit()


async def run_phase(base_url: str, key: str, ids: dict, seconds: float, clients: int) -> dict:
    latencies: dict[str, list[float]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    samples: list[str] = []
    predict_body = {"images": [base64.b64encode(png(10_000)).decode()], "top_k": 3}
    items_url = f"/v1/datasets/{ids['items_dataset']}/items"

    async def client(index: int, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60, limits=limits) as http:
            cursor = None
            turn = index
            while time.monotonic() < deadline:
                route = ROUTES[turn % len(ROUTES)]
                turn += 1
                t0 = time.perf_counter()
                try:
                    if route == "predict":
                        r = await http.post(f"/v1/classifiers/{ids['classifier']}/predict", json=predict_body)
                    elif route == "items":
                        r = await http.get(items_url, params={"limit": 100} | ({"cursor": cursor} if cursor else {}))
                        if r.status_code == 200:
                            cursor = r.json()["next_cursor"]
                    else:
                        r = await http.get(f"/v1/{route}")
                    ok = 200 <= r.status_code < 300
                    size = len(r.content)
                    why = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, size, why = False, 0, f"{type(exc).__name__}: {exc}"
                latencies[route].append(time.perf_counter() - t0)
                sizes[route].append(size)
                if not ok:
                    errors[route] += 1
                    if len(samples) < 5:
                        samples.append(f"{route}: {why}")

    deadline = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(*(client(i, deadline) for i in range(clients)))
    wall = time.monotonic() - started
    return {"latencies": latencies, "sizes": sizes, "errors": errors, "samples": samples, "wall": wall}


def table(phase: str, result: dict) -> list[str]:
    rows = []
    all_lat: list[float] = []
    for route in ROUTES:
        lat = np.array(result["latencies"][route]) * 1000
        all_lat += list(lat)
        size = np.mean(result["sizes"][route]) / 1024 if result["sizes"][route] else 0
        rows.append(
            f"| {phase} | {route} | {len(lat)} | {result['errors'][route]} | {len(lat) / result['wall']:.1f} "
            f"| {np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} | {size:.1f} |"
        )
    lat = np.array(all_lat)
    errors = sum(result["errors"].values())
    rows.append(
        f"| {phase} | **all** | {len(lat)} | {errors} | {len(lat) / result['wall']:.1f} "
        f"| {np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} | |"
    )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each phase (60 for the reported run)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent clients")
    args = ap.parse_args()

    db_name = f"candor_load_{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="candor-load-"))
    env = {
        "HF_HUB_OFFLINE": "1",
        "CANDOR_EMBEDDED": "0",
        "CANDOR_DATA_DIR": str(tmp),
        "CANDOR_DATABASE_URL": f"{PG}/{db_name}",
        "CANDOR_BROKER_URL": REDIS,
        "CANDOR_FEATURE_CHUNK_SIZE": "8",
    }
    os.environ.update(env)  # the seeding below runs the service code in this process
    import torch
    from sqlalchemy import create_engine, text

    torch.set_num_threads(2)
    from app.core.migrate import upgrade
    from app.demo import free_port

    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    server = None
    try:
        upgrade(env["CANDOR_DATABASE_URL"])
        t0 = time.monotonic()
        ids = seed(f"load-{uuid.uuid4().hex[:8]}")
        print(f"seeded in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--log-level", "warning", "--no-migrate"],
            env=os.environ | env,
            cwd=ROOT,
        )
        base_url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{base_url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise SystemExit("candor serve exited")
            time.sleep(0.1)
        else:
            raise SystemExit("candor serve did not become ready")

        lines = [
            f"{args.clients} clients, {args.seconds:.0f} s a phase, one `candor serve` process (uvicorn), PostgreSQL",
            "",
            "| phase | route | requests | errors | req/s | p50 ms | p99 ms | mean KiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        failed = 0
        for phase in ("base", "wide"):
            if phase == "wide":
                widen(ids["tenant"])
            asyncio.run(run_phase(base_url, ids["key"], ids, min(3.0, args.seconds), 5))  # warm-up, not counted
            result = asyncio.run(run_phase(base_url, ids["key"], ids, args.seconds, args.clients))
            lines += table(phase, result)
            failed += sum(result["errors"].values())
            for sample in result["samples"]:
                print(f"error sample ({phase}): {sample}", file=sys.stderr)
        print("\n".join(lines))
        return 1 if failed else 0
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        from app.core.db import get_engine

        get_engine().dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
