"""The verbs beyond create and read, on PostgreSQL with jobs run in-process on the tiny backbone:
labels filtered and in review order, the classifier artifact, predict's array candidates,
DELETE of classifiers and datasets (what goes, what stays), and another tenant's 404 on each."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from tests.helpers import b64png, png_bytes

CLASSES = ["cat", "dog", "bird", "fish"]
CONFIG = {
    "backbone": "tiny",
    "prompt": {"n_ctx": 4},
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.01},
    "features": {"batch_size": 4},
    # thresholds that flag some items and not others on this data
    "output": {"ambiguous_margin": 0.2, "suspect_outside_mass": 0.5},
}


@pytest.fixture(scope="module")
def committed(database):
    """Real commits through the app's own sessions; every table emptied afterwards."""
    from app.core import registry

    yield database
    registry.classifiers.clear()
    with database.begin() as conn:
        tables = conn.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
        ).all()
        conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))


@pytest.fixture(scope="module")
def sent():
    """Job messages recorded instead of sent; ``finish`` runs them here."""
    from app.jobs import dispatch

    messages: list[tuple] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "get_dispatcher", lambda: type("D", (), {"send": lambda self, *a: messages.append(a)})())
        yield messages


@pytest.fixture(scope="module")
def api(committed, sent):
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


def new_key(tenant: str) -> dict[str, str]:
    from app.core.db import session_scope
    from app.core.security import create_key

    with session_scope() as s:
        _, key = create_key(s, f"{tenant}-{uuid.uuid4().hex[:6]}")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def acme(committed):
    return new_key("acme")


@pytest.fixture(scope="module")
def globex(committed):
    return new_key("globex")


def upload(api, key, seeds, name="d") -> str:
    ds = api.post("/v1/datasets", json={"name": name, "classes": CLASSES}, headers=key).json()["id"]
    items = [
        {"id": f"it-{k}", "image_base64": b64png(k), "candidates": [CLASSES[k % 4], CLASSES[(k + 1) % 4]]}
        for k in seeds
    ]
    assert api.post(f"/v1/datasets/{ds}/items", json={"items": items}, headers=key).status_code == 201
    return ds


def finish(api, key, ds, sent) -> dict:
    """Start a job on ``ds`` and run its steps here; the succeeded job."""
    from app.jobs import dispatch, pipeline

    steps = {dispatch.START: pipeline.start_job, dispatch.FEATURIZE: pipeline.featurize_chunk}
    steps[dispatch.TRAIN] = pipeline.train_job
    start = len(sent)
    job = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key).json()
    i = start
    while i < len(sent):
        task, *args = sent[i]
        if task in steps:
            steps[task](*args)
        i += 1
    job = api.get(f"/v1/jobs/{job['id']}", headers=key).json()
    assert job["state"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def trained(api, acme, sent):
    ds = upload(api, acme, range(14))
    return ds, finish(api, acme, ds, sent)


def labels(api, key, job, **params) -> list[dict]:
    answer = api.get(f"/v1/jobs/{job['id']}/labels", params=params, headers=key)
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines()]


def is_problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    return answer.json()


# ---- labels ------------------------------------------------------------------------------------
def test_labels_filtered_by_flag_and_confidence(api, acme, trained):
    _, job = trained
    rows = labels(api, acme, job)
    assert [r["id"] for r in rows] == [f"it-{k}" for k in range(14)]
    for flag in ("ambiguous", "candidates_suspect"):
        flagged = [r for r in rows if r[flag]]
        assert 0 < len(flagged) < len(rows), flag  # the filter has something to keep and to drop
        assert labels(api, acme, job, flag=flag) == flagged
    cut = sorted(r["confidence"] for r in rows)[len(rows) // 2]
    unsure = labels(api, acme, job, max_confidence=cut)
    assert unsure == [r for r in rows if r["confidence"] <= cut] and 0 < len(unsure) < len(rows)
    both = labels(api, acme, job, flag="ambiguous", max_confidence=cut)
    assert both == [r for r in rows if r["ambiguous"] and r["confidence"] <= cut]
    csv_ids = api.get(f"/v1/jobs/{job['id']}/labels", params={"format": "csv", "flag": "ambiguous"}, headers=acme)
    assert [line.split(",")[0] for line in csv_ids.text.splitlines()[1:]] == [r["id"] for r in rows if r["ambiguous"]]


def test_labels_in_review_order_follow_the_review_queues_benefit_page_by_page(api, acme, trained, monkeypatch):
    from types import SimpleNamespace

    from app.jobs import routes
    from app.ml.review import review_order, review_row

    _, job = trained
    rows = labels(api, acme, job)
    expected = [rows[i] for i, _ in review_order([review_row(SimpleNamespace(**r)) for r in rows])]
    assert labels(api, acme, job, order="review") == expected
    assert [r["id"] for r in expected] != [r["id"] for r in rows]  # the order says something here
    monkeypatch.setattr(routes, "LABEL_PAGE", 4)  # several pages, each continuing after the last row's key
    assert labels(api, acme, job, order="review") == expected
    assert labels(api, acme, job) == rows
    cut = sorted(r["confidence"] for r in rows)[-3]
    assert labels(api, acme, job, order="review", max_confidence=cut) == [r for r in expected if r["confidence"] <= cut]


def test_labels_filters_refuse_bad_values_by_name(api, acme, trained):
    _, job = trained
    for params, field in (
        ({"flag": "odd"}, "flag"),
        ({"max_confidence": 2}, "max_confidence"),
        ({"order": "x"}, "order"),
    ):
        problem = is_problem(api.get(f"/v1/jobs/{job['id']}/labels", params=params, headers=acme), 422)
        assert problem["errors"][0]["loc"] == ["query", field]


# ---- classifiers -------------------------------------------------------------------------------
def test_the_artifact_is_the_folder_candor_predict_loads(api, acme, trained, tmp_path):
    from app.ml.artifacts import Classifier

    _, job = trained
    clf = api.get(f"/v1/classifiers/{job['classifier_id']}", headers=acme).json()
    answer = api.get(f"/v1/classifiers/{clf['id']}/artifact", headers=acme)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    assert answer.headers["etag"] == f'"{clf["version"]}"'
    assert answer.headers["content-disposition"] == f'attachment; filename="classifier-{clf["id"]}.zip"'
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        assert sorted(zf.namelist()) == ["classifier.json", "classifier.safetensors"]
        zf.extractall(tmp_path)
    loaded = Classifier.load(tmp_path)
    assert loaded.version == clf["version"] and loaded.classes == CLASSES


def test_predict_takes_candidates_as_an_array_and_the_old_comma_string(api, acme, trained):
    _, job = trained
    url = f"/v1/classifiers/{job['classifier_id']}/predict"
    image = png_bytes(3)

    def tops(answer) -> list[set[str]]:
        assert answer.status_code == 200, answer.text
        return [{s["label"] for s in p["top"]} for p in answer.json()["predictions"]]

    form = api.post(
        url, files=[("files", ("a.png", image))], data={"candidates": ["cat", "fish"], "top_k": "2"}, headers=acme
    )
    assert tops(form) == [{"cat", "fish"}]
    legacy = api.post(url, files=[("files", ("a.png", image))], params={"candidates": "cat,fish"}, headers=acme)
    assert tops(legacy) == [{"cat", "fish"}]
    body = {"images": [b64png(3)], "candidates": ["cat", "fish"], "top_k": 2}
    assert tops(api.post(url, json=body, headers=acme)) == [{"cat", "fish"}]
    bad = api.post(url, files=[("files", ("a.png", image))], data={"top_k": "0"}, headers=acme)
    assert is_problem(bad, 422)["errors"][0]["loc"] == ["body", "top_k"]


def test_another_tenant_gets_404_on_every_new_route(api, acme, globex, trained):
    ds, job = trained
    clf = job["classifier_id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}/labels?flag=ambiguous&order=review"),
        ("GET", f"/v1/classifiers/{clf}/artifact"),
        ("DELETE", f"/v1/classifiers/{clf}"),
        ("DELETE", f"/v1/datasets/{ds}"),
    ):
        assert is_problem(api.request(method, path, headers=globex), 404)["status"] == 404, path
    assert api.get(f"/v1/classifiers/{clf}", headers=acme).status_code == 200
    assert api.get(f"/v1/datasets/{ds}", headers=acme).status_code == 200


def test_delete_a_classifier_keeps_its_job_and_labels(api, acme, sent):
    ds = upload(api, acme, range(20, 26), name="short-lived")
    job = finish(api, acme, ds, sent)
    clf = job["classifier_id"]
    predict = f"/v1/classifiers/{clf}/predict"
    assert api.post(predict, json={"images": [b64png(1)]}, headers=acme).status_code == 200  # cached now
    assert api.delete(f"/v1/classifiers/{clf}", headers=acme).status_code == 204
    for method, path in (("GET", f"/v1/classifiers/{clf}"), ("GET", f"/v1/classifiers/{clf}/artifact")):
        is_problem(api.request(method, path, headers=acme), 404)
    is_problem(api.post(predict, json={"images": [b64png(1)]}, headers=acme), 404)
    is_problem(api.delete(f"/v1/classifiers/{clf}", headers=acme), 404)
    assert api.get(f"/v1/jobs/{job['id']}", headers=acme).json()["classifier_id"] is None
    assert len(labels(api, acme, job)) == 6


def test_a_classifier_deleted_by_another_process_stops_predicting_after_the_cache_time(api, acme, sent, monkeypatch):
    from app.classifiers.models import ClassifierRow
    from app.core.db import session_scope
    from app.core.settings import get_settings

    ds = upload(api, acme, range(30, 36), name="elsewhere")
    clf = finish(api, acme, ds, sent)["classifier_id"]
    predict = f"/v1/classifiers/{clf}/predict"
    assert api.post(predict, json={"images": [b64png(1)]}, headers=acme).status_code == 200  # cached now
    with session_scope() as s:  # as another API process would
        s.execute(ClassifierRow.__table__.delete().where(ClassifierRow.id == uuid.UUID(clf)))
    monkeypatch.setattr(get_settings(), "auth_cache_seconds", 0.0)
    is_problem(api.post(predict, json={"images": [b64png(1)]}, headers=acme), 404)


# ---- datasets ----------------------------------------------------------------------------------
def sha(seed: int) -> str:
    return hashlib.sha256(png_bytes(seed)).hexdigest()


def stored(tenant_key: dict, table) -> set[str]:
    """The image hashes of ``table`` (images or features) that the key's tenant holds."""
    from app.core.db import session_scope
    from app.core.security import hash_key
    from app.tenants.models import ApiKey

    with session_scope() as s:
        tenant = s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(tenant_key["Authorization"][7:])))
        return set(s.scalars(select(table.sha256).where(table.tenant_id == tenant)))


def test_a_dataset_deleted_while_an_upload_reuses_its_image_keeps_that_image(api):
    """The upload's transaction has found image 50 stored (and will not store it again) when the
    dataset that brought it is deleted: the deletion waits for the upload and then keeps the image."""
    import threading

    from app.core.db import get_sessionmaker
    from app.datasets import repository as repo
    from app.datasets.models import Dataset, ImageBlob, Item

    a = new_key("race")
    first, second = upload(api, a, [50]), upload(api, a, [51])
    uploading = get_sessionmaker()()
    tenant = uploading.scalar(select(Dataset.tenant_id).where(Dataset.id == uuid.UUID(first)))
    assert repo.existing_images(uploading, tenant, [sha(50)]) == {sha(50)}
    done = threading.Event()

    def delete_first():
        with get_sessionmaker()() as deleting:
            repo.delete_dataset(deleting, tenant, uuid.UUID(first))
            deleting.commit()
        done.set()

    deleter = threading.Thread(target=delete_first)
    deleter.start()
    try:
        assert not done.wait(1.5)  # waits for the upload
        uploading.add(Item(dataset_id=uuid.UUID(second), external_id="it-50", image_sha256=sha(50), candidates=CLASSES))
        uploading.commit()
    finally:
        uploading.close()
        deleter.join(30)
    assert done.is_set()
    assert stored(a, ImageBlob) == {sha(50), sha(51)}
    assert api.get(f"/v1/datasets/{first}", headers=a).status_code == 404
    got = api.get(f"/v1/datasets/{second}/items", headers=a).json()["items"]
    assert sorted(i["id"] for i in got) == ["it-50", "it-51"]


def test_delete_a_dataset_removes_its_items_jobs_and_the_images_only_it_used(api, sent):
    from app.core.db import session_scope
    from app.datasets.models import ImageBlob, Item
    from app.jobs.models import FeatureRow

    a, b = new_key("deleter"), new_key("bystander")
    first = upload(api, a, range(40, 46))
    second = upload(api, a, [45, 46])  # shares image 45 with the first
    theirs = upload(api, b, [40, 41])  # the same images, another tenant
    job = finish(api, a, first, sent)
    finish(api, b, theirs, sent)
    assert stored(a, FeatureRow) >= {sha(k) for k in range(40, 46)}

    is_problem(api.delete(f"/v1/datasets/{first}", headers=b), 404)
    assert api.delete(f"/v1/datasets/{first}", headers=a).status_code == 204
    for path in (f"/v1/datasets/{first}", f"/v1/jobs/{job['id']}", f"/v1/classifiers/{job['classifier_id']}"):
        is_problem(api.get(path, headers=a), 404)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Item).where(Item.dataset_id == uuid.UUID(first))) == 0
    assert stored(a, ImageBlob) == {sha(45), sha(46)}  # 45 is still used by the second dataset
    assert stored(a, FeatureRow) == {sha(45)}
    assert stored(b, ImageBlob) == {sha(40), sha(41)} == stored(b, FeatureRow)  # the other tenant's stay
    assert api.get(f"/v1/datasets/{second}/items", headers=a).json()["items"][0]["id"] == "it-45"

    queued = api.post("/v1/jobs", json={"dataset_id": second, "config": CONFIG}, headers=a).json()
    busy = is_problem(api.delete(f"/v1/datasets/{second}", headers=a), 409)
    assert queued["id"] in busy["detail"] and "cancel" in busy["detail"]
    assert api.get(f"/v1/datasets/{second}", headers=a).json()["item_count"] == 2
    assert api.post(f"/v1/jobs/{queued['id']}/cancel", headers=a).json()["state"] == "cancelled"
    assert api.delete(f"/v1/datasets/{second}", headers=a).status_code == 204
    assert stored(a, ImageBlob) == set() == stored(a, FeatureRow)
    assert api.get("/v1/datasets", headers=a).json() == {"items": [], "next_cursor": None}
