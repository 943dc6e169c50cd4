"""Database engine, sessions and the declarative base. PostgreSQL in production, SQLite embedded."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import TypeVar

from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.core.settings import get_settings

log = logging.getLogger("candor.db")
T = TypeVar("T")
JSONType = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator):
    """A timestamp column that always hands back an aware UTC datetime: PostgreSQL returns the
    session's zone and SQLite returns naive values (stored as UTC), so every API answer and every
    comparison sees the same ``...Z`` instant whatever the database. Aware values are stored as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def coerce_compared_value(self, op, value):
        """A datetime compared with a column is bound as one (in UTC); anything else, such as the
        interval in ``heartbeat_at - timedelta(...)``, as the plain DateTime type would bind it."""
        return self if isinstance(value, datetime) else self.impl_instance.coerce_compared_value(op, value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime()}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # pragma: no cover - embedded mode
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=get_settings().db_pool_timeout_seconds
    )


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.effective_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    import app.models  # noqa: F401  every table's mapper is known before the first query

    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work for tasks: commit on success, roll back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# Errors that say the database is unreachable for now (down, restarting, pool exhausted), not that
# the statement is wrong: worth retrying.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError, PoolTimeout)


def retry_db(fn: Callable[[], T], budget: float | None = None, what: str = "database work") -> T:
    """Run ``fn``; on a transient database error retry with exponential backoff (0.5 s doubling to
    10 s) until ``budget`` seconds (``CANDOR_DB_RETRY_SECONDS``) after the first failure, then re-raise."""
    budget = get_settings().db_retry_seconds if budget is None else budget
    deadline = None  # counted from the first failure: a long step may fail late and still retry
    delay = 0.5
    while True:
        try:
            return fn()
        except TRANSIENT_DB_ERRORS as exc:
            deadline = deadline or time.monotonic() + budget
            wait = min(delay, deadline - time.monotonic())
            if wait <= 0:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, type(exc).__name__, wait)
            time.sleep(wait)
            delay = min(delay * 2, 10.0)
