"""A finished job to review, on a real service: `candor serve` (subprocess) on the test database and
an in-process Celery worker, with a dataset of Fashion-MNIST test images (Debian's
`dataset-fashion-mnist`, which `make test` installs) and candidate sets of two or three classes."""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.sdk_service import JOB_CONFIG, new_key

CONFIG = JOB_CONFIG | {"output": {"ambiguous_margin": 0.2, "suspect_outside_mass": 0.5}}
N_ITEMS = 24


@dataclass
class Trained:
    base: str
    key: str
    tenant: str
    dataset_id: str
    job_id: str
    classes: list[str]
    candidates: dict[str, list[str]]  # item id -> its uploaded set
    truth: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def png(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).resize((112, 112), Image.NEAREST).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wait_job(base: str, auth: dict, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth, timeout=30).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            assert job["state"] == "succeeded", job
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        time.sleep(0.5)


def start_job(base: str, auth: dict, dataset_id: str) -> str:
    r = httpx.post(f"{base}/v1/jobs", headers=auth, json={"dataset_id": dataset_id, "config": CONFIG}, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def labels(base: str, auth: dict, job_id: str) -> dict[str, dict]:
    import json

    r = httpx.get(f"{base}/v1/jobs/{job_id}/labels", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    return {row["id"]: row for row in map(json.loads, r.text.splitlines())}


def make_trained(base: str, name: str, tenant: str | None = None, seed: int = 0) -> Trained:
    from app.ml.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

    tenant = tenant or f"review-{name}-{seed}"
    key = new_key(tenant)
    auth = {"Authorization": f"Bearer {key}"}
    classes = list(FASHION_MNIST_CLASSES)
    images, truth_idx = load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(truth_idx), N_ITEMS, replace=False)
    items, cands, truth = [], {}, {}
    for n, i in enumerate(pick):
        true = classes[int(truth_idx[i])]
        others = [c for c in classes if c != true]
        extra = list(rng.choice(others, 1 + n % 2, replace=False))
        item_id = f"fm-{n:02d}"
        cands[item_id] = [true, *map(str, extra)]
        truth[item_id] = true
        items.append({"id": item_id, "image_base64": png(images[i]), "candidates": cands[item_id]})
    r = httpx.post(f"{base}/v1/datasets", headers=auth, json={"name": name, "classes": classes}, timeout=30)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    r = httpx.post(f"{base}/v1/datasets/{ds}/items", headers=auth, json={"items": items}, timeout=60)
    assert r.status_code in (200, 201), r.text
    job_id = start_job(base, auth, ds)
    wait_job(base, auth, job_id)
    return Trained(base, key, tenant, ds, job_id, classes, cands, truth)


@pytest.fixture(scope="module")
def other_key(service_url):
    return new_key("review-other-tenant")
