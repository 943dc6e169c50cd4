"""Service speed on this machine, against baselines measured in the same script.

Starts the real service (`candor serve` on PostgreSQL, `candor worker` on Redis; or both in one
process with --embedded) on loopback, then measures:

(a) ingest rate: small PNGs (28x28 Fashion-MNIST-sized) POSTed as JSON batches of 500 over HTTP;
    goal >= 300 images/s;
(b) featurisation through the service (job submitted -> state 'training', chunks run by the
    worker) against the raw encoder (decode + preprocess + image tower) on the same images in this
    process; goal >= 90%;
(c) /predict p50 latency for one image against the raw encoder's forward for one image; goal
    <= 1.15x.

Usage: python bench/service.py [--backbone offline] [--n-ingest 3000] [--n-features 256] [--embedded]
Needs PostgreSQL and Redis on 127.0.0.1 unless --embedded (`make services` starts them).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.demo import free_port  # noqa: E402
from app.ml.backbones import load_backbone  # noqa: E402
from app.ml.features import decode_image  # noqa: E402

PG = os.environ.get("CANDOR_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS = os.environ.get("CANDOR_BENCH_REDIS", "redis://127.0.0.1:6379/14")


def pngs(n: int, seed: int, size: int = 28) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="offline")
    ap.add_argument("--n-ingest", type=int, default=3000)
    ap.add_argument("--n-features", type=int, default=256)
    ap.add_argument("--predict-reps", type=int, default=40)
    ap.add_argument("--embedded", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="candor-bench-"))
    env = os.environ | {"HF_HUB_OFFLINE": "1", "CANDOR_DATA_DIR": str(tmp)}
    procs: list[subprocess.Popen] = []
    db_name = f"candor_bench_{os.getpid()}"
    if args.embedded:
        env["CANDOR_EMBEDDED"] = "1"
    else:
        from sqlalchemy import create_engine, text

        admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
        env |= {"CANDOR_EMBEDDED": "0", "CANDOR_DATABASE_URL": f"{PG}/{db_name}", "CANDOR_BROKER_URL": REDIS}
        import redis

        redis.Redis.from_url(REDIS).flushdb()  # no message of an earlier run may reach this run's worker
    candor = [sys.executable, "-m", "app.cli"]
    try:
        key = subprocess.run([*candor, "keys", "create", "--tenant", "bench"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        port = free_port()
        procs.append(subprocess.Popen([*candor, "serve", "--port", str(port), "--log-level", "warning", "--no-migrate"]
                                      + (["--embedded"] if args.embedded else []), env=env))  # fmt: skip
        if not args.embedded:
            procs.append(subprocess.Popen([*candor, "worker", "--queues", "cpu,gpu", "--concurrency", "1",
                                           "--log-level", "warning"], env=env, cwd=ROOT))  # fmt: skip
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=600
        )
        for _ in range(300):
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        mode = "embedded (SQLite, in-process worker)" if args.embedded else "PostgreSQL + Redis + 1 Celery worker"
        print(f"# {os.cpu_count()} cores, torch {torch.__version__}; service: {mode}; backbone {args.backbone}")

        classes = ["a", "b", "c", "d"]
        # (a) ingest
        ds = http.post("/v1/datasets", json={"name": "ingest", "classes": classes}).raise_for_status().json()["id"]
        blobs = pngs(args.n_ingest, seed=1)
        batches = [
            {"items": [{"id": f"i{k}", "image_base64": base64.b64encode(blobs[k]).decode(), "candidates": ["a", "b"]}
                       for k in range(s, min(s + 500, len(blobs)))]}
            for s in range(0, len(blobs), 500)
        ]  # fmt: skip
        t = time.perf_counter()
        for b in batches:
            http.post(f"/v1/datasets/{ds}/items", json=b).raise_for_status()
        ingest_rate = len(blobs) / (time.perf_counter() - t)

        # (b) featurisation: warm the worker's backbone on a 4-image job, then time a fresh set
        def run_job(dataset_id: str) -> tuple[float, dict]:
            config = {"backbone": args.backbone, "train": {"epochs": 1}, "features": {"batch_size": 64}}
            t0 = time.perf_counter()
            job = http.post("/v1/jobs", json={"dataset_id": dataset_id, "config": config}).raise_for_status().json()
            while True:
                job = http.get(f"/v1/jobs/{job['id']}").json()
                if job["state"] != "queued" and job["state"] != "featurizing":
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            while job["state"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.2)
                job = http.get(f"/v1/jobs/{job['id']}").json()
            assert job["state"] == "succeeded", job
            return elapsed, job

        warm = http.post("/v1/datasets", json={"name": "warm", "classes": classes}).json()["id"]
        http.post(f"/v1/datasets/{warm}/items", json={"items": [
            {"id": f"w{k}", "image_base64": base64.b64encode(b).decode(), "candidates": ["a"]}
            for k, b in enumerate(pngs(4, seed=2, size=96))]}).raise_for_status()  # fmt: skip
        _, warm_job = run_job(warm)
        feat_blobs = pngs(args.n_features, seed=3, size=96)
        fds = http.post("/v1/datasets", json={"name": "features", "classes": classes}).json()["id"]
        for s in range(0, len(feat_blobs), 500):
            http.post(f"/v1/datasets/{fds}/items", json={"items": [
                {"id": f"f{k}", "image_base64": base64.b64encode(feat_blobs[k]).decode(), "candidates": ["a", "c"]}
                for k in range(s, min(s + 500, len(feat_blobs)))]}).raise_for_status()  # fmt: skip
        service_s, _ = run_job(fds)

        backbone = load_backbone(args.backbone)
        t = time.perf_counter()
        for s in range(0, len(feat_blobs), 64):
            backbone.encode_images([decode_image(b, "x") for b in feat_blobs[s : s + 64]])
        raw_s = time.perf_counter() - t

        # (c) /predict p50 for one image vs the raw forward for one image
        clf = warm_job["classifier_id"]
        one = base64.b64encode(feat_blobs[0]).decode()
        for _ in range(3):
            http.post(f"/v1/classifiers/{clf}/predict", json={"images": [one], "top_k": 1}).raise_for_status()
        lat, server = [], []
        for _ in range(args.predict_reps):
            t = time.perf_counter()
            r = http.post(f"/v1/classifiers/{clf}/predict", json={"images": [one], "top_k": 1}).raise_for_status()
            lat.append(time.perf_counter() - t)
            server.append(float(r.headers["server-timing"].split("predict;dur=")[1].split(",")[0]) / 1000)
        raw = []
        for _ in range(3):
            backbone.encode_images([decode_image(feat_blobs[0], "x")])
        for _ in range(args.predict_reps):
            t = time.perf_counter()
            backbone.encode_images([decode_image(feat_blobs[0], "x")])
            raw.append(time.perf_counter() - t)
        p50, raw50 = statistics.median(lat), statistics.median(raw)

        print()
        rows = [
            (
                f"(a) ingest, {args.n_ingest} 28x28 PNGs, JSON batches of 500",
                f"{ingest_rate:.0f} img/s",
                "—",
                "—",
                ">= 300 img/s",
            ),
            (
                f"(b) featurisation, {args.n_features} images",
                f"{args.n_features / service_s:.1f} img/s (submit -> training)",
                f"raw encoder {args.n_features / raw_s:.1f} img/s",
                f"**{100 * raw_s / service_s:.0f}%** of raw",
                ">= 90%",
            ),
            (
                f"(c) /predict, one image, p50 of {args.predict_reps}",
                f"{1000 * p50:.1f} ms (server-side predict {1000 * statistics.median(server):.1f} ms)",
                f"raw forward {1000 * raw50:.1f} ms",
                f"**{p50 / raw50:.2f}x**",
                "<= 1.15x",
            ),
        ]
        print("| measure | service | baseline | ratio | goal |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        if not args.embedded:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
