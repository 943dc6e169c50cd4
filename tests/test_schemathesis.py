"""Schemathesis against the ASGI app on the real test database: no request may answer 5xx, and
every answer matches the response schema the OpenAPI document declares for its status.

Every operation of the OpenAPI schema gets a bounded number of generated requests (valid and
invalid), sent with a real API key. Path parameters that name a dataset, job or classifier point,
half of the time, at real ones of that tenant, so the routes get past their 404s.
"""

from __future__ import annotations

import os
import zlib

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.main import create_app
from tests.helpers import b64png

EXAMPLES = int(os.environ.get("CANDOR_SCHEMATHESIS_EXAMPLES", "25"))
app = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schemathesis.serializer.alias("application/zip", "application/octet-stream")  # ZIP imports: raw bytes


@pytest.fixture(scope="module")
def seeded(database):
    """A tenant with a key, a dataset with items and a queued job, committed for real."""
    from fastapi.testclient import TestClient

    from app.core.security import create_key
    from app.jobs import dispatch
    from tests.service_fixtures import RecordingDispatcher

    engine = create_engine(os.environ["CANDOR_DATABASE_URL"])
    with Session(engine) as session:
        _, key = create_key(session, "schemathesis")
        session.commit()
    engine.dispose()
    auth = {"Authorization": f"Bearer {key}"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatch, "get_dispatcher", lambda: RecordingDispatcher())
        with TestClient(app) as client:
            ds = client.post("/v1/datasets", json={"name": "seed", "classes": ["cat", "dog", "bird"]}, headers=auth)
            ds = ds.json()["id"]
            items = [{"id": f"i{k}", "image_base64": b64png(k), "candidates": ["cat", "dog"]} for k in range(3)]
            assert client.post(f"/v1/datasets/{ds}/items", json={"items": items}, headers=auth).status_code < 300
            job = client.post("/v1/jobs", json={"dataset_id": ds, "config": {"backbone": "tiny"}}, headers=auth)
            assert job.status_code == 202, job.text
    return {"auth": auth, "ids": {"dataset_id": ds, "job_id": job.json()["id"]}}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, seeded, dispatcher):
    for name, value in seeded["ids"].items():
        if case.path_parameters and name in case.path_parameters and zlib.crc32(repr(case.body).encode()) % 2 == 0:
            case.path_parameters[name] = value
    headers = dict(seeded["auth"])
    if case.headers and "Authorization" in case.headers:
        case.headers.pop("Authorization")
    case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])
