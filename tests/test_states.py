"""The job state machine: every (from, to) pair, and a race where exactly one writer wins."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.jobs import states
from app.jobs.models import Job

ALL = sorted(states.TRANSITIONS)


def make_job(session: Session, state: str) -> uuid.UUID:
    from app.core.security import create_key
    from app.datasets.models import Dataset

    tenant, _ = create_key(session, f"t-{uuid.uuid4().hex[:8]}")
    ds = Dataset(tenant_id=tenant.id, name="d", classes=["a", "b"])
    session.add(ds)
    session.flush()
    job = Job(tenant_id=tenant.id, dataset_id=ds.id, state=state, config={}, config_hash="x", progress={})
    session.add(job)
    session.flush()
    return job.id


@pytest.mark.parametrize("to", ALL)
@pytest.mark.parametrize("frm", ALL)
def test_every_transition_pair(db, frm, to):
    job_id = make_job(db, frm)
    moved = states.transition(db, job_id, to)
    assert moved == (to in states.TRANSITIONS[frm])
    state = db.scalar(select(Job.state).where(Job.id == job_id).execution_options(populate_existing=True))
    assert state == (to if moved else frm)
    if moved and to in states.TERMINAL:
        assert db.scalar(select(Job.finished_at).where(Job.id == job_id)) is not None


def test_terminal_states_are_final():
    for terminal in states.TERMINAL:
        assert states.TRANSITIONS[terminal] == frozenset()
    assert states.CANCELLED in states.TRANSITIONS[states.CANCELLING]


def test_two_sessions_race_exactly_one_wins(database):
    from app.core.db import get_sessionmaker

    make = get_sessionmaker()
    with make() as s:
        job_id = make_job(s, states.QUEUED)
        s.commit()
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def claim():
        with make() as s:
            barrier.wait()
            results.append(states.transition(s, job_id, states.FEATURIZING))
            s.commit()

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    with database.begin() as conn:
        conn.execute(text("TRUNCATE jobs, datasets, api_keys, tenants CASCADE"))


def schema_differences(engine) -> list:
    """What Alembic's autogenerate finds between a migrated database and the ORM models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.models import Base

    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_migrations_round_trip_and_match_the_models(database, tmp_path, dialect):
    """upgrade -> downgrade one revision at a time to base -> upgrade on a scratch database; after
    each upgrade the schema is exactly what the ORM models declare (no autogenerate difference)."""
    import os

    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect

    from app.core.migrate import alembic_config, downgrade, upgrade
    from tests.service_fixtures import PG_ADMIN_URL

    revisions = len(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
    name = f"{os.environ['CANDOR_DATABASE_URL'].rsplit('/', 1)[1]}_mig"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    if dialect == "postgresql":
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp_path / 'embedded.db'}"
    eng = create_engine(url)
    try:
        upgrade(url)
        assert {"jobs", "items", "features", "classifiers"} <= set(inspect(eng).get_table_names())
        assert schema_differences(eng) == []
        for _ in range(revisions):
            downgrade(url, revision="-1")
        assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert "job_results" in inspect(eng).get_table_names()
        assert schema_differences(eng) == []
    finally:
        eng.dispose()
        if dialect == "postgresql":
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_worker_process_knows_every_table():
    """A Celery worker imports only its tasks; every mapper must still resolve its foreign keys."""
    import subprocess
    import sys

    code = (
        "import worker.tasks\n"
        "from app.core.db import get_sessionmaker\n"
        "from sqlalchemy.orm import configure_mappers\n"
        "get_sessionmaker(); configure_mappers()\n"
        "from app.core.db import Base\n"
        "targets = [fk.column for t in Base.metadata.sorted_tables for c in t.c for fk in c.foreign_keys]\n"
        "assert {c.table.name for c in targets} >= {'tenants', 'datasets', 'jobs'}\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
