"""List routes: keyset pages of summaries, one query for the job list, dataset detail from SQL."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select

from app.classifiers.models import ClassifierRow
from app.core import pagination
from app.datasets.models import Dataset
from app.jobs.models import Job
from app.tenants.models import Tenant
from tests.helpers import b64png

LISTS = {
    "/v1/datasets": {"id", "name", "class_count", "created_at"},
    "/v1/jobs": {
        "id", "dataset_id", "state", "config_hash", "progress", "error", "attempt", "classifier_id",
        "created_at", "updated_at", "started_at", "finished_at",
    },
    "/v1/classifiers": {
        "id", "job_id", "dataset_id", "version", "backbone", "backbone_id", "class_count", "created_at",
    },
}  # fmt: skip
MODELS = {"/v1/datasets": Dataset, "/v1/jobs": Job, "/v1/classifiers": ClassifierRow}


def tenant_id(db, name: str) -> uuid.UUID:
    return db.scalar(select(Tenant.id).where(Tenant.name == name))


def add_dataset(db, tenant: uuid.UUID, classes: list[str], **kw) -> Dataset:
    ds = Dataset(tenant_id=tenant, name=kw.pop("name", "d"), classes=classes, **kw)
    db.add(ds)
    db.flush()
    return ds


def add_job(db, ds: Dataset, with_classifier: bool, **kw) -> tuple[Job, ClassifierRow | None]:
    job = Job(
        tenant_id=ds.tenant_id,
        dataset_id=ds.id,
        state="succeeded" if with_classifier else "queued",
        config={"train": {"epochs": 3}, "templates": ["a photo of a {}."] * 50},
        config_hash="h",
        progress={"stage": "featurizing", "done": 3, "total": 3, "unknown": "ignored"},
        metrics={"history": [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(200)]},
        **kw,
    )
    db.add(job)
    db.flush()
    clf = None
    if with_classifier:
        clf = ClassifierRow(
            tenant_id=ds.tenant_id,
            job_id=job.id,
            dataset_id=ds.id,
            version="v1",
            backbone="tiny",
            backbone_id="tiny:1",
            classes=ds.classes,
            metrics=job.metrics,
            artifact=b"not read by a list",
            created_at=job.created_at,
        )
        db.add(clf)
        db.flush()
    return job, clf


def walk(client, auth, route: str, limit: int) -> tuple[list[dict], int]:
    """Every item of a list, following next_cursor; also the number of pages."""
    items, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = client.get(route, params=params, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= limit
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 100


@pytest.fixture
def populated(db, auth, other_auth):
    """8 datasets, jobs and classifiers for acme (five sharing one creation time, so the id breaks
    ties) and one of each for globex."""
    acme, globex = tenant_id(db, "acme"), tenant_id(db, "globex")
    classes = [f"class-{k}" for k in range(2000)]
    tie = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)
    stamps = [tie] * 5 + [tie - timedelta(seconds=1), tie + timedelta(microseconds=1), tie + timedelta(days=3)]
    for at in stamps:
        ds = add_dataset(db, acme, classes, created_at=at)
        add_job(db, ds, with_classifier=True, created_at=at)
    other = add_dataset(db, globex, ["x", "y"])
    add_job(db, other, with_classifier=True)
    db.commit()
    return acme


@pytest.mark.parametrize("route", list(LISTS))
def test_lists_page_newest_first_by_time_then_id_without_gaps(client, auth, db, populated, route):
    model = MODELS[route]
    rows = db.execute(select(model.created_at, model.id).where(model.tenant_id == populated)).all()
    expected = [str(i) for _, i in sorted(rows, key=lambda r: (r[0], r[1]), reverse=True)]
    assert len(expected) == 8
    for limit in (1, 3, 8, 1000):
        items, pages = walk(client, auth, route, limit)
        assert [it["id"] for it in items] == expected
        assert pages == -(-8 // limit)  # a full last page ends the list, no empty page after it


@pytest.mark.parametrize("route", list(LISTS))
def test_list_items_are_summaries_without_big_fields(client, auth, populated, route):
    items = client.get(route, headers=auth).json()["items"]
    assert items and all(set(it) == LISTS[route] for it in items)
    if "class_count" in LISTS[route]:
        assert {it["class_count"] for it in items} == {2000}
    if route == "/v1/jobs":
        assert all(it["progress"] == {"stage": "featurizing", "done": 3, "total": 3} | dict.fromkeys(
            ["epoch", "epochs", "last_loss", "eta_seconds"]) for it in items)  # fmt: skip


def test_list_of_another_tenant_is_its_own(client, auth, other_auth, populated):
    for route in LISTS:
        assert len(client.get(route, headers=other_auth).json()["items"]) == 1


def test_detail_routes_keep_the_full_objects(client, auth, populated):
    ds = client.get("/v1/datasets", params={"limit": 1}, headers=auth).json()["items"][0]
    assert len(client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()["classes"]) == 2000
    job = client.get("/v1/jobs", params={"limit": 1}, headers=auth).json()["items"][0]
    full = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert len(full["metrics"]["history"]) == 200 and full["config"]["train"]["epochs"] == 3
    clf = client.get(f"/v1/classifiers/{job['classifier_id']}", headers=auth).json()
    assert len(clf["classes"]) == 2000 and len(clf["metrics"]["history"]) == 200


def statement_count(engine, call) -> tuple[int, object]:
    """The queries ``call`` sends (transaction control such as the tests' savepoints left out)."""
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        result = call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(statements), result


def test_job_list_statements_do_not_grow_with_the_jobs(client, auth, db, database):
    acme = tenant_id(db, "acme")
    ds = add_dataset(db, acme, ["a", "b"])
    first, clf = add_job(db, ds, with_classifier=True)
    classifiers = {str(first.id): str(clf.id)}
    db.commit()
    client.get("/v1/jobs", headers=auth)  # warm: the key is verified and cached

    one, r = statement_count(database, lambda: client.get("/v1/jobs", headers=auth))
    assert len(r.json()["items"]) == 1
    for k in range(19):
        job, clf = add_job(db, ds, with_classifier=k % 2 == 0)
        classifiers[str(job.id)] = str(clf.id) if clf else None
    db.commit()
    twenty, r = statement_count(database, lambda: client.get("/v1/jobs", headers=auth))
    assert twenty == one, f"{one} statements for 1 job, {twenty} for 20"
    assert {it["id"]: it["classifier_id"] for it in r.json()["items"]} == classifiers


@pytest.mark.parametrize(
    "route, cursor",
    [
        ("/v1/datasets", "garbage!"),
        ("/v1/datasets", "é"),
        ("/v1/datasets", pagination.encode_seq(5)),  # an item cursor on another list
        ("/v1/jobs", pagination.encode("t", 10**19, uuid.uuid4().hex)),  # time out of range
        ("/v1/jobs", pagination.encode("t", 0, "zz" * 16)),
        ("/v1/classifiers", pagination.encode("t", 0)),
        ("/v1/classifiers", "A" * 5000),
        ("items", pagination.encode_seq(2**63)),  # outside int64
        ("items", pagination.encode("s", -1)),
        ("items", pagination.encode("s", "--5")),
        ("/v1/jobs", pagination.encode("t", "1_000", uuid.uuid4().hex)),
        ("items", pagination.encode_time_id(datetime.now(UTC), uuid.uuid4())),
    ],
)
def test_malformed_cursors_answer_400(client, auth, db, route, cursor):
    if route == "items":
        ds = add_dataset(db, tenant_id(db, "acme"), ["a", "b"])
        db.commit()
        route = f"/v1/datasets/{ds.id}/items"
    r = client.get(route, params={"cursor": cursor}, headers=auth)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    detail = r.json()["detail"]
    assert detail.startswith("cursor: ") and "'" not in detail and "0x" not in detail


# --- dataset detail: SQL aggregates against a Python computation, PostgreSQL and SQLite ---

CLASSES = ["cat", "dog", 'say "hi"', "back\\slash", "ünïcödé", "🐱 kitten", "a,b", "x y"] + [f"c{k}" for k in range(24)]


def candidate_sets(seed: int, n: int) -> list[list[str]]:
    rng = random.Random(seed)
    sets = []
    for i in range(n):
        cands = rng.sample(CLASSES, rng.randint(1, 6))
        if i % 7 == 0:
            cands.append(cands[0])  # a repeated candidate is stored, and counted, once
        sets.append(cands)
    return sets


def python_detail(sets: list[list[str]]) -> dict:
    unique = [list(dict.fromkeys(s)) for s in sets]
    hist = Counter(c for s in unique for c in s)
    return {
        "item_count": len(sets),
        "mean_candidates": round(sum(map(len, unique)) / len(sets), 4) if sets else None,
        "class_histogram": {c: hist.get(c, 0) for c in CLASSES},
    }


def items_batch(sets: list[list[str]], prefix: str, start: int = 0) -> dict:
    items = enumerate(sets, start=start)
    return {"items": [{"id": f"{prefix}-{i}", "image_base64": b64png(i, 8), "candidates": c} for i, c in items]}


def test_dataset_detail_aggregates_equal_python_on_postgresql(client, auth):
    made = [client.post("/v1/datasets", json={"name": n, "classes": CLASSES}, headers=auth) for n in "ab"]
    ds, other = (r.json()["id"] for r in made)
    assert client.get(f"/v1/datasets/{ds}", headers=auth).json() | {"classes": None} == {
        "id": ds, "name": "a", "classes": None, "created_at": made[0].json()["created_at"],
        "candidate_policy": {"min_votes": 1, "ground_truth_wins": True},
    } | python_detail([])  # fmt: skip
    sets = candidate_sets(1, 150)
    for start in (0, 100):
        batch = items_batch(sets[start : start + 100], "i", start)
        r = client.post(f"/v1/datasets/{ds}/items", json=batch, headers=auth)
        assert r.status_code == 201, r.text
    # another dataset of the tenant sharing the images counts only there
    assert client.post(f"/v1/datasets/{other}/items", json=items_batch(sets[:30], "o"), headers=auth).status_code == 201
    got = client.get(f"/v1/datasets/{ds}", headers=auth).json()
    want = python_detail(sets)
    assert {k: got[k] for k in want} == want
    assert want["class_histogram"]["🐱 kitten"] > 0 and want["item_count"] == 150
    assert client.get(f"/v1/datasets/{other}", headers=auth).json()["item_count"] == 30


def test_dataset_detail_aggregates_equal_python_on_sqlite(tmp_path):
    from sqlalchemy.orm import Session

    from app.core.db import make_engine
    from app.core.migrate import upgrade
    from app.core.security import TenantRef, create_key
    from app.datasets import service
    from app.datasets.schemas import DatasetCreate, ItemsBatch

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            tenant_row, _ = create_key(session, "acme")
            tenant = TenantRef(id=tenant_row.id, name="acme")
            ds = service.create_dataset(session, tenant, DatasetCreate(name="a", classes=CLASSES))
            other = service.create_dataset(session, tenant, DatasetCreate(name="b", classes=CLASSES))
            empty = service.dataset_detail(session, ds)
            assert empty.model_dump(include={"item_count", "mean_candidates", "class_histogram"}) == python_detail([])
            sets = candidate_sets(2, 150)
            for target, chosen in ((ds, sets), (other, sets[:30])):
                batch = ItemsBatch.model_validate(items_batch(chosen, target.name))
                assert service.ingest(session, tenant, target, service.incoming_from_json(batch.items)).created
            ds_id = ds.id
            session.commit()
        with Session(engine) as session:
            ds = session.get(Dataset, ds_id)
            got = service.dataset_detail(session, ds).model_dump()
            want = python_detail(sets)
            assert {k: got[k] for k in want} == want and got["classes"] == CLASSES
    finally:
        engine.dispose()
