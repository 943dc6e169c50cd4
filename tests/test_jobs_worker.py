"""Job pipeline and Celery worker on real PostgreSQL and Redis (no rollback: tables truncated)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from app.jobs import states
from tests.helpers import b64png, png_bytes

CONFIG = {
    "backbone": "tiny",
    "prompt": {"n_ctx": 4},
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.01},
    "features": {"batch_size": 4},
}
TABLES = (
    "job_results, classifiers, job_chunks, jobs, features, items, images, datasets, idempotency_keys, api_keys, tenants"
)


@pytest.fixture
def committed(database):
    """Real commits through the app's own sessions; every table emptied afterwards."""
    from app.core import registry

    yield database
    registry.classifiers.clear()
    with database.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture
def api(committed):
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def key(committed):
    from app.core.db import session_scope
    from app.core.security import create_key

    with session_scope() as s:
        _, k = create_key(s, f"tenant-{uuid.uuid4().hex[:6]}")
    return {"Authorization": f"Bearer {k}"}


@pytest.fixture(scope="module")
def celery_worker():
    """An embedded Celery worker (solo pool, in a thread) on the real Redis broker."""
    import redis
    from celery.contrib.testing.worker import start_worker

    from app.core.settings import get_settings
    from worker.celery_app import celery_app

    redis.Redis.from_url(get_settings().broker_url).flushdb()
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, queues=["cpu", "gpu"], shutdown_timeout=30
    ) as w:
        yield w


def upload(api, key, n=10, classes=("cat", "dog", "bird")):
    ds = api.post("/v1/datasets", json={"name": "d", "classes": list(classes)}, headers=key).json()["id"]
    items = [
        {"id": f"it-{k}", "image_base64": b64png(k), "candidates": [classes[k % 3], classes[(k + 1) % 3]]}
        for k in range(n)
    ]
    assert api.post(f"/v1/datasets/{ds}/items", json={"items": items}, headers=key).status_code == 201
    return ds


def wait(api, key, job_id, until=states.TERMINAL, timeout=180):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}", headers=key).json()
        if not seen or seen[-1] != job["state"]:
            seen.append(job["state"])
        if job["state"] in until:
            return job, seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} stuck in {seen}")


def test_end_to_end_upload_job_labels_predict(api, key, celery_worker):
    ds = upload(api, key)
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key)
    assert r.status_code == 202
    job, seen = wait(api, key, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert seen[-1] == "succeeded" and job["attempt"] == 1 and job["finished_at"]
    assert job["metrics"]["items"] == 10 and len(job["metrics"]["history"]) == 3
    assert job["progress"]["stage"] == "succeeded"

    lines = api.get(f"/v1/jobs/{job['id']}/labels", headers=key)
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(x) for x in lines.text.splitlines()]
    assert [r["id"] for r in rows] == [f"it-{k}" for k in range(10)]
    for k, row in enumerate(rows):
        cands = {("cat", "dog", "bird")[k % 3], ("cat", "dog", "bird")[(k + 1) % 3]}
        assert set(row["posterior"]) == cands and row["label"] in cands
    csv_text = api.get(f"/v1/jobs/{job['id']}/labels", params={"format": "csv"}, headers=key).text.splitlines()
    assert csv_text[0].startswith("id,label,confidence") and len(csv_text) == 11

    clf_id = job["classifier_id"]
    assert [c["id"] for c in api.get("/v1/classifiers", headers=key).json()["items"]] == [clf_id]
    clf = api.get(f"/v1/classifiers/{clf_id}", headers=key).json()
    assert clf["classes"] == ["cat", "dog", "bird"] and clf["backbone"] == "tiny"
    pred = api.post(
        f"/v1/classifiers/{clf_id}/predict", json={"images": [b64png(3), b64png(4)], "top_k": 2}, headers=key
    )
    assert pred.status_code == 200, pred.text
    body = pred.json()
    assert (
        len(body["predictions"]) == 2 and len(body["predictions"][0]["top"]) == 2 and body["version"] == clf["version"]
    )
    files = [("files", ("a.png", png_bytes(3), "image/png"))]
    multi = api.post(f"/v1/classifiers/{clf_id}/predict", files=files, params={"candidates": "dog,bird"}, headers=key)
    assert multi.status_code == 200 and {t["label"] for t in multi.json()["predictions"][0]["top"]} <= {"dog", "bird"}
    # the same prediction both ways
    assert multi.json()["predictions"][0]["top"][0]["p"] > 0
    from app.core.db import session_scope
    from app.core.security import create_key

    with session_scope() as s:
        _, other = create_key(s, "intruder")
    stranger = {"Authorization": f"Bearer {other}"}
    for _ in range(2):  # the second answer comes from the warm cache: still 404
        r = api.post(f"/v1/classifiers/{clf_id}/predict", json={"images": [b64png(3)]}, headers=stranger)
        assert r.status_code == 404
    assert api.get(f"/v1/classifiers/{clf_id}", headers=stranger).status_code == 404
    dup = api.post(
        f"/v1/classifiers/{clf_id}/predict",
        json={"images": [b64png(3)], "candidates": ["dog", "dog"], "top_k": 5},
        headers=key,
    )
    assert [t["label"] for t in dup.json()["predictions"][0]["top"]] == ["dog"]
    texty = api.post(
        f"/v1/classifiers/{clf_id}/predict",
        data={"files": "not a file"},
        files=[("x", ("x", b"", "text/plain"))],
        headers=key,
    )
    assert texty.status_code == 422
    bad = api.post(f"/v1/classifiers/{clf_id}/predict", json={"images": ["bm90IGFuIGltYWdl"]}, headers=key)
    assert bad.status_code == 422 and "not a readable image" in bad.json()["detail"]

    # a second job on the same images skips featurisation: no chunks
    second = api.post(
        "/v1/jobs", json={"dataset_id": ds, "config": CONFIG | {"objective": {"name": "cc"}}}, headers=key
    )
    job2, _ = wait(api, key, second.json()["id"])
    assert job2["state"] == "succeeded"
    from app.core.db import session_scope
    from app.jobs.models import Job

    with session_scope() as s:
        assert s.scalar(select(Job.chunks_total).where(Job.id == uuid.UUID(job2["id"]))) == 0
        assert s.scalar(select(Job.chunks_total).where(Job.id == uuid.UUID(job["id"]))) == 3  # 10 images / 4


def test_cancel_while_training(api, key, celery_worker):
    ds = upload(api, key, n=12)
    slow = CONFIG | {"train": {"epochs": 200, "batch_size": 2, "lr": 0.01}}
    job_id = api.post("/v1/jobs", json={"dataset_id": ds, "config": slow}, headers=key).json()["id"]
    wait(api, key, job_id, until={states.TRAINING} | states.TERMINAL)
    deadline = time.monotonic() + 60
    while api.get(f"/v1/jobs/{job_id}", headers=key).json()["progress"].get("done") in (None, 0):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = api.post(f"/v1/jobs/{job_id}/cancel", headers=key)
    assert r.status_code == 200 and r.json()["state"] in ("cancelling", "cancelled")
    job, _ = wait(api, key, job_id)
    assert job["state"] == "cancelled" and 1 <= job["progress"]["epoch"] < 200


def test_failed_job_records_error(api, key, celery_worker):
    ds = upload(api, key, n=3)
    bad = CONFIG | {"backbone": "openclip:RN50:openai"}  # a known tag whose weights are not cached here
    job_id = api.post("/v1/jobs", json={"dataset_id": ds, "config": bad}, headers=key).json()["id"]
    job, _ = wait(api, key, job_id)
    assert job["state"] == "failed" and "local checkpoint" in job["error"]


def test_training_resumes_from_checkpoint_after_a_killed_worker(api, key, monkeypatch):
    """Run the steps in-process; kill training after epoch 2; the redelivered task resumes there."""
    from app.jobs import dispatch, pipeline
    from app.jobs.models import Job

    sent = []
    recorder = type("D", (), {"send": lambda self, *a: sent.append(a), "waiting_jobs": lambda self: set()})()
    monkeypatch.setattr(dispatch, "get_dispatcher", lambda: recorder)
    ds = upload(api, key, n=8)
    job_id = api.post(
        "/v1/jobs", json={"dataset_id": ds, "config": CONFIG | {"train": {"epochs": 4, "batch_size": 4}}}, headers=key
    ).json()["id"]
    pipeline.start_job(job_id)
    chunks = [a for a in sent if a[0] == dispatch.FEATURIZE]
    assert len(chunks) == 2
    pipeline.start_job(job_id)  # a redelivered start re-sends the pending chunks and plans nothing new
    assert [a for a in sent if a[0] == dispatch.FEATURIZE] == chunks + chunks
    for _, jid, idx in chunks + chunks:  # every chunk delivered twice: counted once
        pipeline.featurize_chunk(jid, idx)
    assert [a[0] for a in sent].count(dispatch.TRAIN) == 1

    import app.ml.trainer as trainer

    class Killed(BaseException):
        pass

    real_train = trainer.train

    def killed_after_two_epochs(*args, hooks=None, **kw):
        def on_epoch_end(ckpt):
            hooks.on_epoch_end(ckpt)
            if ckpt.epoch == 2:
                raise Killed()

        return real_train(*args, hooks=trainer.Hooks(hooks.on_step, on_epoch_end, hooks.should_cancel), **kw)

    monkeypatch.setattr(pipeline, "train", killed_after_two_epochs)
    with pytest.raises(Killed):
        pipeline.train_job(job_id)
    from app.core.db import session_scope

    with session_scope() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job.state == "training" and job.checkpoint_meta["epoch"] == 2 and job.lease_owner
    pipeline.train_job(job_id)  # a duplicate delivery while the lease is live does not train twice
    assert [a for a in sent if a[0] == dispatch.TRAIN] == [(dispatch.TRAIN, job_id)]
    # the dead worker's lease expires: the reaper hands the job to a new delivery
    from app.core.settings import get_settings
    from app.jobs import reaper

    with session_scope() as s:
        s.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(heartbeat_at=Job.heartbeat_at - timedelta(seconds=get_settings().job_lease_seconds + 1))
        )
    assert [(r.state, r.action) for r in reaper.reap()] == [("training", "redriven")]
    assert sent[-1] == (dispatch.TRAIN, job_id)
    with session_scope() as s:
        job = s.get(Job, uuid.UUID(job_id))
        assert job.attempt == 2 and job.lease_owner is None and job.state == "training"
    epochs_run = []
    monkeypatch.setattr(
        pipeline,
        "train",
        lambda *a, resume=None, **kw: (epochs_run.append(resume.epoch), real_train(*a, resume=resume, **kw))[1],
    )
    pipeline.train_job(job_id)
    assert epochs_run == [2]
    done = api.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert done["state"] == "succeeded" and [h["epoch"] for h in done["metrics"]["history"]] == [1, 2, 3, 4]

    # the same job run without interruption gives the same classifier
    fresh = api.post(
        "/v1/jobs", json={"dataset_id": ds, "config": CONFIG | {"train": {"epochs": 4, "batch_size": 4}}}, headers=key
    ).json()["id"]
    monkeypatch.setattr(pipeline, "train", real_train)
    pipeline.start_job(fresh)
    pipeline.train_job(fresh)
    versions = {c["job_id"]: c["version"] for c in api.get("/v1/classifiers", headers=key).json()["items"]}
    assert versions[job_id] == versions[fresh]
    pipeline.train_job(fresh)  # redelivered after success: nothing changes
    assert len(api.get("/v1/classifiers", headers=key).json()["items"]) == 2


@pytest.fixture
def inline(monkeypatch):
    """Steps run by hand: messages are recorded, not sent."""
    from app.jobs import dispatch

    sent: list[tuple] = []
    monkeypatch.setattr(dispatch, "get_dispatcher", lambda: type("D", (), {"send": lambda self, *a: sent.append(a)})())
    return sent


def run_all(sent, start_at=0):
    """Run every recorded step (and the steps they record) in order."""
    from app.jobs import dispatch, pipeline

    steps = {dispatch.START: pipeline.start_job, dispatch.FEATURIZE: pipeline.featurize_chunk}
    steps[dispatch.TRAIN] = pipeline.train_job
    i = start_at
    while i < len(sent):
        task, *args = sent[i]
        steps[task](*args)
        i += 1


def test_feature_cache_is_per_tenant(api, key, inline):
    from app.core.db import session_scope
    from app.core.security import create_key
    from app.jobs.models import Job

    ds = upload(api, key, n=6)
    job_a = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key).json()["id"]
    run_all(inline)
    with session_scope() as s:
        _, other = create_key(s, "second-tenant")
    other_key = {"Authorization": f"Bearer {other}"}
    ds_b = upload(api, other_key, n=6)  # the very same images
    start = len(inline)
    job_b = api.post("/v1/jobs", json={"dataset_id": ds_b, "config": CONFIG}, headers=other_key).json()["id"]
    run_all(inline, start)
    with session_scope() as s:
        totals = {j: s.scalar(select(Job.chunks_total).where(Job.id == uuid.UUID(j))) for j in (job_a, job_b)}
    assert totals[job_a] == totals[job_b] == 2  # B computes its own features: nothing reveals A's images
    assert api.get(f"/v1/jobs/{job_b}", headers=other_key).json()["state"] == "succeeded"


def test_cancel_during_the_last_chunk_finishes_as_cancelled(api, key, inline):
    from app.jobs import dispatch, pipeline

    ds = upload(api, key, n=3)
    job_id = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key).json()["id"]
    pipeline.start_job(job_id)
    chunks = [a for a in inline if a[0] == dispatch.FEATURIZE]
    assert len(chunks) == 1
    real_featurize = pipeline.featurize

    def cancel_meanwhile(*args, **kw):
        out = real_featurize(*args, **kw)
        assert api.post(f"/v1/jobs/{job_id}/cancel", headers=key).json()["state"] == "cancelling"
        return out

    pipeline.featurize = cancel_meanwhile
    try:
        pipeline.featurize_chunk(job_id, 0)
    finally:
        pipeline.featurize = real_featurize
    assert api.get(f"/v1/jobs/{job_id}", headers=key).json()["state"] == "cancelled"
    assert not [a for a in inline if a[0] == dispatch.TRAIN]


def test_items_added_after_submission_belong_to_the_next_job(api, key, inline):
    ds = upload(api, key, n=6)
    job_id = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key).json()["id"]
    more = [{"id": f"late-{k}", "image_base64": b64png(100 + k), "candidates": ["cat"]} for k in range(3)]
    assert api.post(f"/v1/datasets/{ds}/items", json={"items": more}, headers=key).status_code == 201
    run_all(inline)
    job = api.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert job["state"] == "succeeded" and job["metrics"]["items"] == 6
    labels = api.get(f"/v1/jobs/{job_id}/labels", headers=key).text.splitlines()
    assert len(labels) == 6 and not any("late-" in line for line in labels)
