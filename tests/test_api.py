"""The HTTP API on a real PostgreSQL (migrated; each test rolled back)."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from app.jobs import dispatch
from tests.helpers import b64png, png_bytes

PROBLEM = "application/problem+json"


def new_dataset(client, auth, classes=("cat", "dog", "bird"), name="pets"):
    r = client.post("/v1/datasets", json={"name": name, "classes": list(classes)}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def batch(n, start=0, cands=("cat", "dog")):
    return {
        "items": [
            {"id": f"i{k}", "image_base64": b64png(k), "candidates": list(cands)} for k in range(start, start + n)
        ]
    }


def assert_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


def test_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_answers_503_when_the_broker_is_down(client, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "broker_url", "redis://127.0.0.1:1/0")
    body = assert_problem(client.get("/readyz"), 503)
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"].startswith("unreachable")


def test_auth_required_and_checked(client, auth):
    assert_problem(client.get("/v1/datasets"), 401)
    r = client.get("/v1/datasets", headers={"Authorization": "Bearer cnd_not-a-key"})
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/datasets", headers=auth).status_code == 200


def test_revoked_key_stops_working_after_the_cache_ttl(client, db, auth, monkeypatch):
    from sqlalchemy import update

    from app.core.db import utcnow
    from app.core.security import key_cache
    from app.core.settings import get_settings
    from app.tenants.models import ApiKey

    monkeypatch.setattr(get_settings(), "auth_cache_seconds", 60.0)
    assert client.get("/v1/datasets", headers=auth).status_code == 200
    db.execute(update(ApiKey).values(revoked_at=utcnow()))
    db.commit()
    assert client.get("/v1/datasets", headers=auth).status_code == 200  # still trusted within the TTL
    monkeypatch.setattr(key_cache, "_data", {})  # the TTL has passed
    assert_problem(client.get("/v1/datasets", headers=auth), 401)


def test_keys_are_stored_only_as_hashes(db, auth):
    from sqlalchemy import select

    from app.core.security import hash_key
    from app.tenants.models import ApiKey

    key = auth["Authorization"].split()[1]
    stored = db.scalars(select(ApiKey).where(ApiKey.prefix == key[:12])).all()  # this test's key only
    assert len(stored) == 1 and stored[0].key_hash == hash_key(key) and len(stored[0].key_hash) == 32
    assert key.encode() not in stored[0].key_hash


def test_dataset_create_list_detail(client, auth):
    ds = new_dataset(client, auth)
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth).json()["items"]] == [ds]
    r = client.post(f"/v1/datasets/{ds}/items", json=batch(3), headers=auth)
    assert r.status_code == 201 and r.json()["created"] == 3
    client.post(
        f"/v1/datasets/{ds}/items",
        json={"items": [{"id": "x", "image_base64": b64png(50), "candidates": ["bird"]}]},
        headers=auth,
    )
    detail = client.get(f"/v1/datasets/{ds}", headers=auth).json()
    assert detail["item_count"] == 4
    assert detail["class_histogram"] == {"cat": 3, "dog": 3, "bird": 1}
    assert detail["mean_candidates"] == pytest.approx(7 / 4)


@pytest.mark.parametrize(
    "body, detail",
    [
        ({"name": "x", "classes": ["a", "a"]}, "duplicate class name 'a'"),
        ({"name": "x", "classes": ["a"]}, "classes"),
        ({"name": "", "classes": ["a", "b"]}, "name"),
    ],
)
def test_dataset_bad_input(client, auth, body, detail):
    assert detail in assert_problem(client.post("/v1/datasets", json=body, headers=auth), 422)["detail"]


def test_resending_items_changes_nothing(client, auth, db):
    ds = new_dataset(client, auth)
    first = client.post(f"/v1/datasets/{ds}/items", json=batch(4), headers=auth)
    assert first.json()["created"] == 4
    again = client.post(f"/v1/datasets/{ds}/items", json=batch(6), headers=auth)
    body = again.json()
    assert again.status_code == 201 and body["created"] == 2 and body["unchanged"] == 4
    assert [i["status"] for i in body["items"]] == ["unchanged"] * 4 + ["created"] * 2
    # images are shared: a second dataset of the same tenant stores no new image rows
    from sqlalchemy import func, select

    from app.datasets.models import ImageBlob

    before = db.scalar(select(func.count()).select_from(ImageBlob))
    ds2 = new_dataset(client, auth, name="copy")
    assert client.post(f"/v1/datasets/{ds2}/items", json=batch(6), headers=auth).json()["created"] == 6
    assert db.scalar(select(func.count()).select_from(ImageBlob)) == before


def _items_in(db, ds):
    from sqlalchemy import func, select

    from app.datasets.models import Item

    return db.scalar(select(func.count()).select_from(Item).where(Item.dataset_id == ds))


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"id": "b", "image_base64": "bm90IGFuIGltYWdl", "candidates": ["cat"]}, "not a readable image"),
        ({"id": "b", "image_base64": "###", "candidates": ["cat"]}, "not valid base64"),
        ({"id": "b", "image_base64": "IMG", "candidates": ["cow"]}, "candidate 'cow' is not among the classes"),
        ({"id": "b", "image_base64": "IMG", "candidates": []}, "empty candidate set"),
        ({"id": "i0", "image_base64": "IMG", "candidates": ["cat"]}, "duplicate id in this upload, first at item 0"),
    ],
)
def test_bad_item_rejects_whole_batch(client, auth, db, bad, reason):
    import uuid

    ds = new_dataset(client, auth)
    bad = {**bad, "image_base64": b64png(9) if bad["image_base64"] == "IMG" else bad["image_base64"]}
    body = batch(2)
    body["items"].append(bad)
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/items", json=body, headers=auth), 422)
    assert reason in problem["detail"]
    rejected = [i for i in problem["items"] if i["status"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["index"] == 2 and reason in rejected[0]["reason"]
    assert _items_in(db, uuid.UUID(ds)) == 0


def test_changed_item_is_rejected_not_overwritten(client, auth):
    ds = new_dataset(client, auth)
    client.post(f"/v1/datasets/{ds}/items", json=batch(2), headers=auth)
    changed = {"items": [{"id": "i0", "image_base64": b64png(0), "candidates": ["bird"]}]}
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/items", json=changed, headers=auth), 422)
    assert "already exists in this dataset with another candidates" in problem["detail"]


def test_batch_over_limit(client, auth, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_batch_items", 3)
    ds = new_dataset(client, auth)
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/items", json=batch(4), headers=auth), 413)
    assert "limit is 3" in problem["detail"]


def test_validation_errors_are_problems(client, auth):
    ds = new_dataset(client, auth)
    problem = assert_problem(client.post(f"/v1/datasets/{ds}/items", json={"items": "nope"}, headers=auth), 422)
    assert problem["errors"][0]["loc"][:2] == ["body", "items"]
    assert_problem(client.get("/v1/datasets/not-a-uuid", headers=auth), 422)
    assert_problem(client.get("/v1/nowhere", headers=auth), 404)


def test_keyset_pagination(client, auth):
    ds = new_dataset(client, auth)
    client.post(f"/v1/datasets/{ds}/items", json=batch(7), headers=auth)
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/v1/datasets/{ds}/items", params=params, headers=auth).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"i{k}" for k in range(7)]
    assert_problem(client.get(f"/v1/datasets/{ds}/items", params={"cursor": "garbage!"}, headers=auth), 400)


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_import_manifest_and_imagefolder(client, auth):
    ds = new_dataset(client, auth)
    manifest = "\n".join(
        json.dumps(r)
        for r in [
            {"id": "a", "image": "imgs/a.png", "candidates": ["cat", "dog"]},
            {"id": "b", "candidates": ["bird"]},  # ImageFolder layout: bird/b.png
        ]
    )
    data = make_zip(
        {
            "export/manifest.jsonl": manifest.encode(),
            "export/imgs/a.png": png_bytes(1),
            "export/bird/b.png": png_bytes(2),
        }
    )
    r = client.post(f"/v1/datasets/{ds}/imports", content=data, headers=auth | {"Content-Type": "application/zip"})
    assert r.status_code == 201, r.text
    assert r.json()["created"] == 2
    again = client.post(f"/v1/datasets/{ds}/imports", content=data, headers=auth | {"Content-Type": "application/zip"})
    assert again.status_code == 200 and again.json()["unchanged"] == 2


def test_zip_import_bad_input(client, auth, db, monkeypatch):
    import uuid

    ds = new_dataset(client, auth)
    zh = auth | {"Content-Type": "application/zip"}
    bad = make_zip({"manifest.jsonl": b'{"id": "a", "image": "a.png", "candidates": ["cat"]}\n', "a.png": b"not png"})
    assert (
        "not a readable image"
        in assert_problem(client.post(f"/v1/datasets/{ds}/imports", content=bad, headers=zh), 422)["detail"]
    )
    missing = make_zip({"manifest.jsonl": b'{"id": "a", "image": "nope.png", "candidates": ["cat"]}\n'})
    assert (
        "not in the ZIP"
        in assert_problem(client.post(f"/v1/datasets/{ds}/imports", content=missing, headers=zh), 422)["detail"]
    )
    assert (
        "not a ZIP"
        in assert_problem(client.post(f"/v1/datasets/{ds}/imports", content=b"plain", headers=zh), 422)["detail"]
    )
    assert (
        "manifest.jsonl"
        in assert_problem(
            client.post(f"/v1/datasets/{ds}/imports", content=make_zip({"x.png": png_bytes(0)}), headers=zh), 422
        )["detail"]
    )
    assert_problem(
        client.post(f"/v1/datasets/{ds}/imports", content=b"x", headers=auth | {"Content-Type": "text/plain"}), 415
    )
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_upload_bytes", 100)
    big = make_zip({"manifest.jsonl": b"", "a.png": png_bytes(0, size=64)})
    assert "limit" in assert_problem(client.post(f"/v1/datasets/{ds}/imports", content=big, headers=zh), 413)["detail"]
    assert _items_in(db, uuid.UUID(ds)) == 0


def test_zip_with_a_corrupt_member_is_rejected(client, auth):
    ds = new_dataset(client, auth)
    good = png_bytes(1)
    data = bytearray(
        make_zip({"manifest.jsonl": b'{"id": "a", "image": "a.png", "candidates": ["cat"]}\n', "a.png": good})
    )
    at = bytes(data).index(good[20:40])
    data[at] ^= 0xFF  # flip a byte inside the stored member: its CRC no longer matches
    r = client.post(
        f"/v1/datasets/{ds}/imports", content=bytes(data), headers=auth | {"Content-Type": "application/zip"}
    )
    assert "cannot be read" in assert_problem(r, 422)["detail"]


def test_long_class_names_and_bad_selection_config_are_rejected(client, auth):
    long = "x" * 256
    assert (
        "longer than 255"
        in assert_problem(client.post("/v1/datasets", json={"name": "n", "classes": [long, "b"]}, headers=auth), 422)[
            "detail"
        ]
    )
    ds = new_dataset(client, auth)
    client.post(f"/v1/datasets/{ds}/items", json=batch(1), headers=auth)
    for weights in ([], [1.5]):
        cfg = {"selection": {"predict_prior_weights": weights}}
        assert_problem(client.post("/v1/jobs", json={"dataset_id": ds, "config": cfg}, headers=auth), 422)


def test_idempotency_key(client, auth):
    ds = new_dataset(client, auth)
    h = auth | {"Idempotency-Key": "k-1"}
    first = client.post(f"/v1/datasets/{ds}/items", json=batch(2), headers=h)
    replay = client.post(f"/v1/datasets/{ds}/items", json=batch(2), headers=h)
    assert replay.status_code == first.status_code == 201
    assert replay.json() == first.json() and replay.headers["idempotent-replayed"] == "true"
    assert_problem(client.post(f"/v1/datasets/{ds}/items", json=batch(3), headers=h), 422)
    d1 = client.post("/v1/datasets", json={"name": "n", "classes": ["a", "b"]}, headers=auth | {"Idempotency-Key": "d"})
    d2 = client.post("/v1/datasets", json={"name": "n", "classes": ["a", "b"]}, headers=auth | {"Idempotency-Key": "d"})
    assert d1.json()["id"] == d2.json()["id"] and d2.headers["location"] == f"/v1/datasets/{d1.json()['id']}"


def test_tenant_isolation(client, auth, other_auth):
    ds = new_dataset(client, auth)
    client.post(f"/v1/datasets/{ds}/items", json=batch(2), headers=auth)
    assert client.get("/v1/datasets", headers=other_auth).json() == {"items": [], "next_cursor": None}
    assert_problem(client.get(f"/v1/datasets/{ds}", headers=other_auth), 404)
    assert_problem(client.get(f"/v1/datasets/{ds}/items", headers=other_auth), 404)
    assert_problem(client.post(f"/v1/datasets/{ds}/items", json=batch(1), headers=other_auth), 404)
    assert_problem(client.post("/v1/jobs", json={"dataset_id": ds}, headers=other_auth), 404)
    job = client.post("/v1/jobs", json={"dataset_id": ds, "config": {"backbone": "tiny"}}, headers=auth).json()
    assert_problem(client.get(f"/v1/jobs/{job['id']}", headers=other_auth), 404)
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=other_auth), 404)
    assert client.get("/v1/jobs", headers=other_auth).json() == {"items": [], "next_cursor": None}


def test_job_submit_enqueues_after_commit(client, auth, dispatcher):
    ds = new_dataset(client, auth)
    assert_problem(client.post("/v1/jobs", json={"dataset_id": ds}, headers=auth), 409)  # empty dataset
    client.post(f"/v1/datasets/{ds}/items", json=batch(2), headers=auth)
    r = client.post(
        "/v1/jobs", json={"dataset_id": ds, "config": {"backbone": "tiny", "train": {"epochs": 3}}}, headers=auth
    )
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = r.json()
    assert (
        job["state"] == "queued"
        and job["config"]["train"]["epochs"] == 3
        and job["config"]["objective"]["name"] == "proden"
    )
    assert dispatcher.sent == [(dispatch.START, job["id"])]
    bad = client.post("/v1/jobs", json={"dataset_id": ds, "config": {"train": {"epochs": 0}}}, headers=auth)
    assert "epochs" in assert_problem(bad, 422)["detail"]
    assert (
        "unknown backbone"
        in assert_problem(
            client.post("/v1/jobs", json={"dataset_id": ds, "config": {"backbone": "x"}}, headers=auth), 422
        )["detail"]
    )
    assert len(dispatcher.sent) == 1


def test_cancel_queued_job_and_terminal_conflict(client, auth):
    ds = new_dataset(client, auth)
    client.post(f"/v1/datasets/{ds}/items", json=batch(2), headers=auth)
    job = client.post("/v1/jobs", json={"dataset_id": ds}, headers=auth).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["finished_at"]
    assert (
        "already cancelled" in assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth), 409)["detail"]
    )
    assert_problem(client.get(f"/v1/jobs/{job['id']}/labels", headers=auth), 409)


def test_openapi_has_stable_operation_ids(client):
    spec = client.get("/openapi.json").json()
    ops = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"create_dataset", "start_job", "get_labels", "predict", "delete_dataset", "get_classifier_artifact"} <= ops
