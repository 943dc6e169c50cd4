"""Keyset pagination shared by every list route: one opaque cursor codec and one page shape.

A cursor is ``base64url("<kind>:<value>[:<value>...]")`` without padding. Item pages use the kind
``s`` (the item's sequence number, oldest first); the tenant's datasets, jobs and classifiers use
``t`` (creation time in microseconds since the epoch and the row's id, newest first). A cursor of
the wrong kind, a damaged one or one holding values out of range answers 400.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from app.core.problems import Problem

INT64_MAX = 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# datetime covers years 1..9999; anything outside cannot come from a stored row
_MIN_US = (datetime(1, 1, 2, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
MAX_CURSOR_CHARS = 200

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page; omit for the first page")]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: follow ``next_cursor`` (as ``?cursor=``) until it is null."""

    items: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


def bad_cursor(why: str) -> Problem:
    return Problem(400, "Bad Request", f"cursor: {why}; pass a next_cursor this list returned, or none for page one")


def encode(kind: str, *values: object) -> str:
    return base64.urlsafe_b64encode(":".join([kind, *map(str, values)]).encode()).decode().rstrip("=")


def decode(cursor: str, kind: str, parts: int) -> list[str]:
    """The ``parts`` values of a cursor of ``kind``; 400 for anything else."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad_cursor("too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise bad_cursor("not a cursor of this API") from exc
    got, _, rest = raw.partition(":")
    values = rest.split(":")
    if got != kind or len(values) != parts:
        raise bad_cursor("not a cursor of this list")
    return values


def _int(value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"-?[0-9]{1,19}", value):
        raise bad_cursor("damaged")
    number = int(value)
    if not low <= number <= high:
        raise bad_cursor("out of range")
    return number


def encode_seq(seq: int) -> str:
    return encode("s", seq)


def decode_seq(cursor: str | None) -> int:
    """The sequence number to continue after; 0 without a cursor."""
    if not cursor:
        return 0
    return _int(decode(cursor, "s", 1)[0], 0, INT64_MAX)


def encode_time_id(created_at: datetime, row_id: uuid.UUID) -> str:
    if created_at.tzinfo is None:  # SQLite hands back naive UTC
        created_at = created_at.replace(tzinfo=UTC)
    return encode("t", (created_at - EPOCH) // timedelta(microseconds=1), row_id.hex)


def decode_time_id(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """(created_at, id) of the last row of the previous page; None without a cursor."""
    if not cursor:
        return None
    micros, hexid = decode(cursor, "t", 2)
    at = EPOCH + timedelta(microseconds=_int(micros, _MIN_US, _MAX_US))
    if len(hexid) != 32:
        raise bad_cursor("damaged")
    try:
        return at, uuid.UUID(hex=hexid)
    except ValueError as exc:
        raise bad_cursor("damaged") from exc


def newest_first(
    stmt: Select, created_at: InstrumentedAttribute, row_id: InstrumentedAttribute, cursor: str | None, limit: int
) -> Select:
    """``stmt`` ordered newest first by (created_at, id), continuing after ``cursor``, one row more
    than ``limit`` so that the caller can tell whether another page follows."""
    after = decode_time_id(cursor)
    if after is not None:
        stmt = stmt.where(tuple_(created_at, row_id) < tuple_(*after))
    return stmt.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)


def page(rows: Sequence[Any], limit: int, cursor_of: Callable[[Any], str], convert: Callable[[Any], Any]) -> Page:
    """The page of ``rows`` fetched with ``limit + 1``: at most ``limit`` items and the cursor
    after the last one when more rows exist."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=[convert(r) for r in rows], next_cursor=cursor_of(rows[-1]) if more else None)


def time_id_cursor(row: Any) -> str:
    return encode_time_id(row.created_at, row.id)
