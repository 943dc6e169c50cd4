"""Fixtures for the service: a real PostgreSQL database (migrated), per-test rollback, API keys."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

PG_ADMIN_URL = os.environ.get("CANDOR_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TEST_DB = os.environ["CANDOR_DATABASE_URL"].rsplit("/", 1)[1]


@pytest.fixture(scope="session")
def database():
    """A fresh PostgreSQL database with every migration applied; dropped at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{TEST_DB}"'))
    from app.core.db import get_engine, get_sessionmaker
    from app.core.migrate import upgrade
    from app.core.settings import get_settings

    get_settings.cache_clear()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    upgrade(os.environ["CANDOR_DATABASE_URL"])
    yield get_engine()
    get_engine().dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
    admin.dispose()


class RecordingDispatcher:
    def __init__(self):
        self.sent: list[tuple] = []
        self.waiting: set[str] = set()  # job ids the reaper should see as queued behind others

    def send(self, task, *args):
        self.sent.append((task, *args))

    def waiting_jobs(self) -> set[str]:
        return set(self.waiting)


@pytest.fixture
def dispatcher(monkeypatch):
    from app.jobs import dispatch

    rec = RecordingDispatcher()
    monkeypatch.setattr(dispatch, "get_dispatcher", lambda: rec)
    return rec


@pytest.fixture
def db(database):
    """A session inside an outer transaction that is rolled back after the test."""
    conn = database.connect()
    outer = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    outer.rollback()
    conn.close()


@pytest.fixture
def client(db, dispatcher):
    from app.core.deps import get_session
    from app.main import create_app

    app = create_app()
    app.dependency_overrides[get_session] = lambda: db
    with TestClient(app) as c:
        yield c


def make_key(db, tenant: str) -> dict[str, str]:
    from app.core.security import create_key

    _, key = create_key(db, tenant)
    db.commit()
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def auth(db):
    return make_key(db, "acme")


@pytest.fixture
def other_auth(db):
    return make_key(db, "globex")
