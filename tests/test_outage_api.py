"""Database outages at the API: 503 problem+json with Retry-After (never 500), the keep-alive
connection stays usable, and the API recovers by itself when the database is back."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.servers import PrivatePostgres, free_port, private_postgres  # noqa: F401

CANDOR = str(Path(sys.executable).with_name("candor"))
RETRY_AFTER = 3


def new_key(url: str, tenant: str) -> str:
    from app.core.security import create_key

    engine = create_engine(url)
    with Session(engine) as session:
        _, key = create_key(session, tenant)
        session.commit()
    engine.dispose()
    return key


class Api:
    """One keep-alive HTTP/1.1 connection to a server; each call reports whether the socket survived."""

    def __init__(self, port: int, key: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = {"Authorization": f"Bearer {key}"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
        if self.conn.sock is None:
            self.conn.connect()
        sock = self.conn.sock
        headers = dict(self.auth)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=payload, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        assert self.conn.sock is sock, "the server closed the keep-alive connection"
        assert (r.getheader("connection") or "").lower() != "close"
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else {}


@pytest.fixture
def api_on_private_postgres(private_postgres: PrivatePostgres):  # noqa: F811
    from app.core.migrate import upgrade

    upgrade(private_postgres.url)
    key = new_key(private_postgres.url, "acme")
    port = free_port()
    env = os.environ | {
        "CANDOR_DATABASE_URL": private_postgres.url,
        "CANDOR_EMBEDDED": "0",
        "CANDOR_DB_RETRY_AFTER_SECONDS": str(RETRY_AFTER),
        "CANDOR_DB_POOL_TIMEOUT_SECONDS": "2",
    }
    cmd = [CANDOR, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate", "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                probe.request("GET", "/healthz")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "candor serve did not start"
            time.sleep(0.2)
        yield private_postgres, Api(port, key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def assert_unavailable(status: int, headers: dict, body: dict) -> None:
    assert status == 503, body
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["retry-after"] == str(RETRY_AFTER)
    assert body["status"] == 503 and "database" in body["detail"]


def test_database_down_is_503_with_retry_after_and_the_api_recovers_by_itself(api_on_private_postgres):
    pg, api = api_on_private_postgres
    status, _, created = api.call("POST", "/v1/datasets", {"name": "pets", "classes": ["cat", "dog"]})
    assert status == 201, created
    data_routes = [
        ("GET", "/v1/datasets", None),
        ("GET", f"/v1/datasets/{created['id']}", None),
        ("GET", f"/v1/datasets/{created['id']}/items", None),
        ("POST", "/v1/datasets", {"name": "more", "classes": ["a", "b"]}),
        ("GET", "/v1/jobs", None),
        ("GET", "/v1/classifiers", None),
    ]
    for fault in (pg.stop, pg.kill):
        fault()
        for method, path, body in data_routes:
            assert_unavailable(*api.call(method, path, body))
        status, headers, ready = api.call("GET", "/readyz")
        assert status == 503 and ready["checks"]["database"].startswith("unreachable"), ready
        assert headers["retry-after"] == str(RETRY_AFTER)
        pg.start()  # the same API process, no restart
        for method, path, body in data_routes:
            status, _, out = api.call(method, path, body)
            assert status in (200, 201), (path, status, out)
    status, _, page = api.call("GET", "/v1/datasets")
    assert created["id"] in [d["id"] for d in page["items"]]


def test_exhausted_pool_is_503_within_the_pool_timeout(database, monkeypatch):
    """Every pooled connection held elsewhere: a request waits CANDOR_DB_POOL_TIMEOUT_SECONDS, then 503."""
    from fastapi.testclient import TestClient

    from app.core import db as core_db
    from app.core.settings import get_settings
    from app.main import create_app

    key = new_key(os.environ["CANDOR_DATABASE_URL"], "pool-exhaustion")
    monkeypatch.setenv("CANDOR_DB_POOL_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("CANDOR_AUTH_CACHE_SECONDS", "0")
    caches = (get_settings, core_db.get_engine, core_db.get_sessionmaker)
    for cache in caches:
        cache.cache_clear()
    engine = core_db.get_engine()
    held = []
    try:
        with TestClient(create_app()) as client:
            auth = {"Authorization": f"Bearer {key}"}
            assert client.get("/v1/datasets", headers=auth).status_code == 200
            held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
            started = time.monotonic()
            r = client.get("/v1/datasets", headers=auth)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == str(get_settings().db_retry_after_seconds)
            assert time.monotonic() - started < 5
            for conn in held:
                conn.close()
            held = []
            assert client.get("/v1/datasets", headers=auth).status_code == 200
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
        with database.begin() as conn:
            conn.execute(text("DELETE FROM tenants WHERE name = 'pool-exhaustion'"))
        monkeypatch.undo()
        for cache in caches:
            cache.cache_clear()
