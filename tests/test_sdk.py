"""The Python client (`candor`) against the real service: `candor serve` on PostgreSQL, a Celery
worker on Redis, real HTTP. Uploads (folder, manifest, ZIP), idempotent re-runs, per-item 422s,
retries on a real 503, a job waited to success, labels, /predict from paths, PIL images and bytes,
and another tenant's ids."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from candor import (
    Annotation,
    CandidatePolicy,
    Client,
    Conflict,
    ConnectionFailed,
    JobFailed,
    LabelRow,
    NotFound,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WaitTimeout,
)
from tests.helpers import color_image, png_bytes
from tests.sdk_service import JOB_CONFIG, celery_worker, new_key, serve, service_url, stop  # noqa: F401
from tests.servers import PrivatePostgres, free_port, private_postgres  # noqa: F401

CLASSES = ["cat", "dog", "bird"]


def write_manifest_folder(root: Path, n: int, seed: int = 0) -> Path:
    """images/ + manifest.jsonl with two candidates per item; returns the folder."""
    (root / "images").mkdir(parents=True)
    with (root / "manifest.jsonl").open("w") as f:
        for k in range(n):
            color_image(seed + k).save(root / "images" / f"m{k}.png")
            cands = [CLASSES[k % 3], CLASSES[(k + 1) % 3]]
            f.write(json.dumps({"id": f"m{k}", "image": f"images/m{k}.png", "candidates": cands}) + "\n")
    return root


@pytest.fixture
def key(service_url):  # noqa: F811
    return new_key()


@pytest.fixture
def sdk(service_url, key):  # noqa: F811
    with Client(service_url, key, progress=False) as c:
        yield c


@pytest.fixture(scope="module")
def trained(service_url, celery_worker, tmp_path_factory):  # noqa: F811
    """A tenant's dataset of 10 items, cleaned by a finished job."""
    folder = write_manifest_folder(tmp_path_factory.mktemp("trained"), 10, seed=100)
    with Client(service_url, new_key(), progress=False) as c:
        ds = c.create_dataset("trained", CLASSES)
        c.upload(ds, folder / "manifest.jsonl")
        job = c.start_job(ds, JOB_CONFIG).wait(timeout=240)
        yield c, ds, job, folder


def test_upload_a_manifest_then_the_same_again_replays_and_stores_nothing_twice(sdk, tmp_path):
    folder = write_manifest_folder(tmp_path / "m", 7)
    ds = sdk.create_dataset("manifest", CLASSES)
    first = ds.upload(folder / "manifest.jsonl", batch_size=3)
    assert (first.created, first.unchanged, first.batches, first.replayed_batches) == (7, 0, 3, 0)
    assert [o.index for o in first.items] == list(range(7))
    assert [o.id for o in first.items] == [f"m{k}" for k in range(7)]

    again = ds.upload(folder, batch_size=3)  # the folder holding manifest.jsonl: the same batches
    assert (again.created, again.unchanged, again.batches, again.replayed_batches) == (0, 7, 3, 3)
    assert {o.status for o in again.items} == {"unchanged"}

    regrouped = ds.upload(folder, batch_size=5)  # other batches, other keys: the service finds them stored
    assert (regrouped.created, regrouped.unchanged, regrouped.replayed_batches) == (0, 7, 0)

    detail = sdk.get_dataset(ds.id)
    assert detail.item_count == 7
    assert [i.id for i in sdk.list_items(ds, page_size=2)] == [f"m{k}" for k in range(7)]


def test_upload_an_image_folder_joins_copies_under_several_classes_into_one_candidate_set(sdk, tmp_path):
    root = tmp_path / "folder"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
    color_image(1).save(root / "cat" / "a.png")
    color_image(2).save(root / "dog" / "b.png")
    color_image(3).save(root / "cat" / "c.png")
    color_image(3).save(root / "bird" / "c.png")  # the same image under two classes: candidates {bird, cat}
    ds = sdk.create_dataset("folder", CLASSES)
    result = sdk.upload(ds, root)
    assert result.created == 3
    items = {i.id: i for i in sdk.list_items(ds)}
    assert sorted(items) == ["a", "b", "c"]
    assert items["a"].candidates == ["cat"] and sorted(items["c"].candidates) == ["bird", "cat"]


def test_upload_a_zip_then_again_is_replayed(sdk, tmp_path):
    folder = write_manifest_folder(tmp_path / "z", 5, seed=50)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(folder / "manifest.jsonl", "manifest.jsonl")
        for p in sorted((folder / "images").iterdir()):
            zf.write(p, f"images/{p.name}")
    ds = sdk.create_dataset("zip", CLASSES)
    first = sdk.upload(ds, archive)
    assert (first.created, first.unchanged, first.replayed_batches) == (5, 0, 0)
    again = sdk.upload(ds, archive)
    assert (again.created, again.unchanged, again.replayed_batches) == (0, 5, 1)
    assert sdk.get_dataset(ds).item_count == 5


def test_upload_annotations_from_a_manifest_and_an_iterable_under_a_min_votes_policy(sdk, tmp_path):
    root = tmp_path / "votes"
    root.mkdir()
    color_image(7).save(root / "v0.png")
    votes = [
        {"annotator": "a1", "label": "cat"},
        {"annotator": "a2", "label": "cat"},
        {"annotator": "a3", "label": "dog"},
    ]
    (root / "manifest.jsonl").write_text(json.dumps({"id": "v0", "image": "v0.png", "annotations": votes}) + "\n")
    ds = sdk.create_dataset("votes", CLASSES, candidate_policy={"min_votes": 2})
    assert ds.candidate_policy == CandidatePolicy(min_votes=2, ground_truth_wins=True)
    assert sdk.upload(ds, root / "manifest.jsonl").created == 1
    rows = [
        {"id": "v1", "image": png_bytes(8), "annotations": [{"annotator": "r", "label": "bird", "ground_truth": True}]}
    ]
    assert sdk.upload(ds, rows).created == 1
    items = {i.id: i for i in sdk.list_items(ds)}
    assert items["v0"].candidates == ["cat"]
    assert [(a.annotator, a.label) for a in items["v0"].annotations] == [("a1", "cat"), ("a2", "cat"), ("a3", "dog")]
    assert items["v1"].candidates == ["bird"] and items["v1"].annotations == [
        Annotation(annotator="r", label="bird", ground_truth=True)
    ]
    assert sdk.get_dataset(ds).candidate_policy.min_votes == 2
    with pytest.raises(ValidationFailed) as failed:
        sdk.upload(ds, [{"id": "v2", "image": png_bytes(9), "annotations": [{"annotator": "a1", "label": "fish"}]}])
    assert "annotator 'a1'" in str(failed.value) and "'fish'" in str(failed.value)
    row = LabelRow.model_validate(
        {
            "id": "v0",
            "label": "cat",
            "confidence": 1.0,
            "posterior": {"cat": 1.0},
            "annotations": votes,
            "agreed": ["a1"],
        }
    )
    assert row.agreed == ["a1"] and row.annotations[2].label == "dog"


def test_a_rejected_batch_raises_validation_failed_with_each_items_reason(sdk):
    ds = sdk.create_dataset("bad", CLASSES)
    rows = [
        {"id": "ok-0", "image": png_bytes(0), "candidates": ["cat"]},
        {"id": "ok-1", "image": color_image(1), "candidates": ["dog"]},
        {"id": "ok-2", "image": png_bytes(2), "candidates": ["cat", "dog"]},
        {"id": "unknown", "image": png_bytes(3), "candidates": ["cat", "zebra"]},
        {"id": "not-an-image", "image": b"plain text", "candidates": ["dog"]},
    ]
    with pytest.raises(ValidationFailed) as caught:
        sdk.upload(ds, rows, batch_size=2)
    exc = caught.value
    assert exc.status == 422 and exc.title == "Upload rejected"
    assert str(exc).startswith("Upload rejected: 1 of 2 items rejected, nothing stored")
    assert "batch 2 of 3 (upload items 2-3)" in str(exc) and "items of earlier batches are stored" in str(exc)
    by_id = {i.id: i for i in exc.items}
    assert by_id["ok-2"].index == 2 and by_id["ok-2"].status == "created"  # indexed in the whole upload
    assert by_id["unknown"].index == 3 and by_id["unknown"].status == "rejected"
    assert "zebra" in by_id["unknown"].reason
    assert [i.id for i in exc.rejected] == ["unknown"]
    assert exc.uploaded.created == 2
    assert sdk.get_dataset(ds).item_count == 2  # the first batch only; the rejected one stored nothing

    with pytest.raises(ValidationFailed) as caught:
        sdk.upload(ds, [rows[4]])
    assert "not-an-image" in str(caught.value) and caught.value.rejected[0].id == "not-an-image"

    with pytest.raises(ValidationFailed) as caught:  # a request-level 422 carries errors[]
        sdk.start_job(ds, {"train": {"epochs": -1}})
    assert caught.value.errors and caught.value.errors[0]["loc"][-1] == "epochs"
    assert str(caught.value).startswith("Validation failed: ")


def test_a_real_503_is_retried_after_its_retry_after_until_the_database_is_back(
    private_postgres,  # noqa: F811
    tmp_path,
    caplog,
):
    import os

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from app.core.migrate import upgrade
    from app.core.security import create_key

    upgrade(private_postgres.url)
    engine = create_engine(private_postgres.url)
    with Session(engine) as s:
        _, key = create_key(s, "acme")
        s.commit()
    engine.dispose()
    env = os.environ | {
        "CANDOR_DATABASE_URL": private_postgres.url,
        "CANDOR_EMBEDDED": "0",
        "CANDOR_DB_RETRY_AFTER_SECONDS": "1",
        "CANDOR_DB_POOL_TIMEOUT_SECONDS": "2",
    }
    proc, base = serve(env, tmp_path / "serve.log")
    try:
        with Client(base, key, max_retries=0, progress=False) as impatient:
            assert impatient.create_dataset("before", CLASSES).name == "before"
            private_postgres.stop()
            with pytest.raises(Unavailable) as caught:
                impatient.create_dataset("down", CLASSES)
        assert caught.value.status == 503
        assert str(caught.value) == "Service Unavailable: the database is unavailable; retry in 1 seconds"

        back = threading.Timer(2.5, private_postgres.start)
        back.start()
        started = time.monotonic()
        with (
            caplog.at_level(logging.WARNING, logger="candor.client"),
            Client(base, key, max_retries=30, backoff=0.01, progress=False) as patient,
        ):
            ds = patient.create_dataset("after", CLASSES)
            names = [d.name for d in patient.list_datasets()]
        back.join()
        assert ds.name == "after" and sorted(names) == ["after", "before"]  # created once
        assert time.monotonic() - started >= 2.0
        retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert retries and all("503; retrying in 1.0 s" in m for m in retries), retries  # Retry-After, not backoff
    finally:
        stop(proc)


class CountingTransport(httpx.HTTPTransport):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def handle_request(self, request):
        self.calls += 1
        return super().handle_request(request)


def test_an_unreachable_service_is_retried_then_raises_connection_failed():
    transport = CountingTransport()
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with (
        Client(base, "key", max_retries=2, backoff=0.01, progress=False, transport=transport) as c,
        pytest.raises(ConnectionFailed) as caught,
    ):
        c.get_dataset("00000000-0000-4000-8000-000000000000")
    assert transport.calls == 3
    assert f"cannot reach Candor at {base}" in str(caught.value) and "after 3 attempts" in str(caught.value)


def test_a_wrong_key_raises_unauthorized(service_url):  # noqa: F811
    with Client(service_url, "not-a-key", progress=False) as c, pytest.raises(Unauthorized) as caught:
        next(c.list_datasets())
    assert caught.value.status == 401 and str(caught.value).startswith("Unauthorized")


def test_a_job_waited_to_success_then_its_labels_and_predictions(trained, capsys):
    c, _, job, folder = trained
    assert job.state == "succeeded" and job.classifier_id is not None and job.finished_at.tzinfo is not None
    assert job.metrics["items"] == 10

    rows = list(job.labels())
    assert all(isinstance(r, LabelRow) for r in rows)
    assert [r.id for r in rows] == [f"m{k}" for k in range(10)]
    for k, r in enumerate(rows):
        cands = {CLASSES[k % 3], CLASSES[(k + 1) % 3]}
        assert set(r.posterior) == cands and r.label in cands and 0 < r.confidence <= 1

    csv_path = c.download_labels(job, folder / "labels.csv", format="csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("id,label,confidence") and len(lines) == 11
    probs = json.loads(c.download_labels(job, folder / "pred_probs.json", format="pred_probs").read_text())
    assert probs["classes"] == CLASSES and probs["ids"] == [r.id for r in rows]
    chosen = [p[CLASSES.index(r.label)] for p, r in zip(probs["pred_probs"], rows, strict=True)]
    assert chosen == pytest.approx([r.confidence for r in rows], abs=1e-6)
    assert probs["label_quality"] == [r.confidence for r in rows]

    clf = job.classifier()
    assert clf.classes == CLASSES and clf.backbone == "tiny"
    assert [x.id for x in c.list_classifiers()] == [clf.id]
    image = folder / "images" / "m3.png"
    from_path = clf.predict(image, top_k=2)
    from PIL import Image

    with Image.open(image) as pil:
        from_pil = c.predict(clf.id, [pil.copy(), image.read_bytes()], top_k=2)
    assert len(from_path) == 1 and len(from_path[0].top) == 2
    assert [p.index for p in from_pil] == [0, 1]
    assert from_pil[0].label == from_pil[1].label == from_path[0].label
    assert from_pil[1].top[0].p == pytest.approx(from_path[0].top[0].p, abs=1e-6)
    restricted = c.predict(clf, image, candidates=["dog", "bird"])
    assert {t.label for t in restricted[0].top} <= {"dog", "bird"}

    many = c.predict(clf, [png_bytes(k) for k in range(300)], top_k=1)  # two requests of at most 256
    assert [p.index for p in many] == list(range(300))


def test_wait_shows_progress_times_out_and_a_cancelled_job_raises_job_failed(sdk, key, service_url, tmp_path, capsys):  # noqa: F811
    ds = sdk.create_dataset("slow", CLASSES)
    ds.upload(write_manifest_folder(tmp_path / "s", 4, seed=200))
    job = ds.start_job(JOB_CONFIG | {"train": {"epochs": 50, "batch_size": 4}})
    with pytest.raises(WaitTimeout) as caught:
        job.wait(timeout=0.3, poll_interval=0.1)
    assert caught.value.job.id == job.id and "is still" in str(caught.value)
    cancelled = job.cancel()
    assert cancelled.state in ("cancelling", "cancelled")
    with Client(service_url, key, progress=True) as shown, pytest.raises(JobFailed) as failed:
        shown.wait(job, timeout=120, poll_interval=0.2)
    assert failed.value.job.state == "cancelled" and str(failed.value) == f"job {job.id} cancelled"
    assert "cancelled" in capsys.readouterr().err  # the progress bar names the state
    last = sdk.wait(job, raise_on_failure=False)
    assert last.state == "cancelled"
    assert [j.id for j in sdk.list_jobs()] == [job.id]


def test_another_tenants_ids_raise_not_found(trained, service_url):  # noqa: F811
    _, ds, job, folder = trained
    with Client(service_url, new_key(), progress=False) as stranger:
        checks = [
            lambda: stranger.get_dataset(ds.id),
            lambda: stranger.upload(ds.id, folder / "manifest.jsonl"),
            lambda: stranger.start_job(ds.id),
            lambda: stranger.get_job(job.id),
            lambda: stranger.cancel_job(job.id),
            lambda: list(stranger.labels(job.id)),
            lambda: stranger.get_classifier(job.classifier_id),
            lambda: stranger.predict(job.classifier_id, png_bytes(1)),
        ]
        for check in checks:
            with pytest.raises(NotFound) as caught:
                check()
            assert caught.value.status == 404 and str(caught.value).startswith("Not found: ")
        assert list(stranger.list_datasets()) == [] and list(stranger.list_jobs()) == []
    assert str(job.id) in str(caught.value) or str(job.classifier_id) in str(caught.value)


def test_the_client_imports_neither_the_service_nor_torch():
    code = "import sys, candor; print(sorted({m.split('.')[0] for m in sys.modules} & {'app', 'torch', 'worker'}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path.cwd())
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr


def test_an_artifact_as_the_service_stores_it_becomes_a_folder_candor_predict_loads(trained, tmp_path):
    from sqlalchemy import select

    from app.classifiers.models import ClassifierRow as Row
    from app.core.db import session_scope
    from app.ml.artifacts import Classifier as Artifact
    from candor.client import _write_artifact_blob

    _, _, job, _ = trained
    with session_scope() as s:
        blob = s.scalar(select(Row.artifact).where(Row.id == job.classifier_id))
    _write_artifact_blob(blob, tmp_path)
    local = Artifact.load(tmp_path)
    assert local.version == job.classifier().version and local.classes == CLASSES


def test_labels_filtered_by_flag_and_confidence_and_in_review_order(trained):
    c, _, job, _ = trained
    everything = list(c.labels(job))
    ambiguous = list(c.labels(job, flag="ambiguous"))
    assert [r.id for r in ambiguous] == [r.id for r in everything if r.ambiguous]
    suspect = list(job.labels(flag="candidates_suspect"))
    assert [r.id for r in suspect] == [r.id for r in everything if r.candidates_suspect]
    cut = sorted(r.confidence for r in everything)[len(everything) // 2]
    unsure = list(c.labels(job, max_confidence=cut))
    assert unsure and [r.id for r in unsure] == [r.id for r in everything if r.confidence <= cut]
    from app.ml.review import review_order, review_row

    review = list(c.labels(job, order="review"))
    # the review queue's order: most expected benefit of a look first (app/ml/review.py)
    ranked = review_order([review_row(r) for r in everything])
    assert [r.id for r in review] == [everything[i].id for i, _ in ranked]


def test_a_downloaded_classifier_loads_and_predicts_like_the_service(trained, tmp_path, capsys):
    from app.cli import main
    from app.ml.artifacts import Classifier as Artifact

    c, _, job, folder = trained
    clf = job.classifier()
    saved = clf.download(tmp_path / "clf")
    assert sorted(p.name for p in saved.iterdir()) == ["classifier.json", "classifier.safetensors"]
    local = Artifact.load(saved)
    assert local.version == clf.version and local.classes == clf.classes
    image = folder / "images" / "m3.png"
    assert main(["predict", str(saved), str(image), "--top-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == c.predict(clf, image, top_k=1)[0].label


def test_delete_a_dataset_and_refuse_while_its_job_runs(sdk, tmp_path):
    ds = sdk.create_dataset("doomed", CLASSES)
    ds.upload(write_manifest_folder(tmp_path / "d", 3, seed=400))
    sdk.delete_dataset(ds)
    with pytest.raises(NotFound):
        sdk.get_dataset(ds.id)
    busy = sdk.create_dataset("busy", CLASSES)
    busy.upload(write_manifest_folder(tmp_path / "b", 3, seed=500))
    job = busy.start_job(JOB_CONFIG | {"train": {"epochs": 50, "batch_size": 4}})
    with pytest.raises(Conflict):
        sdk.delete_dataset(busy)
    job.cancel()
    sdk.wait(job, raise_on_failure=False, timeout=120)
    sdk.delete_dataset(busy)
    assert list(sdk.list_datasets()) == []


def test_delete_a_classifier(trained):  # last: it removes the module's classifier
    c, _, job, _ = trained
    c.delete_classifier(job.classifier_id)
    with pytest.raises(NotFound):
        c.get_classifier(job.classifier_id)
    assert list(c.list_classifiers()) == []
