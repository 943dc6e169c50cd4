"""Every timestamp an answer holds is UTC with a `Z`, and the same instant from POST and from GET:
on SQLite (embedded mode, which stores naive values) and on PostgreSQL whose session time zone is
not UTC. The dataset delete runs on SQLite too."""

from __future__ import annotations

import os
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from tests.helpers import b64png

UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def timestamps(node, where="") -> dict[str, str]:
    """Every ``*_at`` value of an answer, by its path."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_at") and isinstance(value, str):
                found[f"{where}.{key}"] = value
            found |= timestamps(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found |= timestamps(value, f"{where}[{i}]")
    return found


def app_on(engine):
    from app.core.deps import get_session
    from app.main import create_app

    app = create_app()

    def session():
        with Session(engine, expire_on_commit=False) as s:
            yield s

    app.dependency_overrides[get_session] = session
    return TestClient(app)


def exercise(client: TestClient, auth: dict) -> list[dict]:
    """POST and GET every kind of resource; the answers, each POST's beside its GET's."""
    made = client.post("/v1/datasets", json={"name": "t", "classes": ["cat", "dog"]}, headers=auth)
    assert made.status_code == 201, made.text
    ds = made.json()
    items = {"items": [{"id": "a", "image_base64": b64png(1), "candidates": ["cat", "dog"]}]}
    assert client.post(f"/v1/datasets/{ds['id']}/items", json=items, headers=auth).status_code == 201
    job = client.post("/v1/jobs", json={"dataset_id": ds["id"], "config": {"backbone": "tiny"}}, headers=auth)
    assert job.status_code == 202, job.text
    job = job.json()
    got_ds = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    got_job = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got_ds["created_at"] == ds["created_at"]
    assert (got_job["created_at"], got_job["updated_at"]) == (job["created_at"], job["updated_at"])
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()
    answers = [ds, job, got_ds, got_job, cancelled]
    for path in ("/v1/datasets", "/v1/jobs", f"/v1/datasets/{ds['id']}/items"):
        answers.append(client.get(path, headers=auth).json())
    return answers


def check_all_utc(answers: list[dict]) -> None:
    found = {}
    for i, answer in enumerate(answers):
        found |= timestamps(answer, f"answer{i}")
    assert len(found) >= 15 and all(a in found for a in ("answer4.finished_at", "answer7.items[0].created_at"))
    bad = {k: v for k, v in found.items() if not UTC_Z.match(v)}
    assert bad == {}


def test_sqlite_answers_utc_timestamps_and_deletes_a_dataset(tmp_path, dispatcher):
    from app.core.db import make_engine
    from app.core.migrate import upgrade
    from app.core.security import create_key
    from app.datasets.models import ImageBlob, Item

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            _, key = create_key(s, "acme")
            s.commit()
        auth = {"Authorization": f"Bearer {key}"}
        with app_on(engine) as client:
            answers = exercise(client, auth)
            check_all_utc(answers)
            ds = answers[0]["id"]
            assert client.delete(f"/v1/datasets/{ds}", headers=auth).status_code == 204
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(Item)) == 0
            assert s.scalar(select(func.count()).select_from(ImageBlob)) == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata"])
def test_postgresql_in_another_time_zone_answers_utc_timestamps(database, dispatcher, zone):
    from app.core.security import create_key

    engine = create_engine(os.environ["CANDOR_DATABASE_URL"], connect_args={"options": f"-c timezone={zone}"})
    try:
        with Session(engine) as s:
            assert s.scalar(select(func.current_setting("TimeZone"))) == zone
            _, key = create_key(s, f"zone-{zone}")
            s.commit()
        with app_on(engine) as client:
            check_all_utc(exercise(client, {"Authorization": f"Bearer {key}"}))
    finally:
        engine.dispose()
