"""SQL functions over the JSON columns, on either database: jsonb on PostgreSQL, JSON1 on SQLite."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import Function


def _postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def array_length(session: Session, column) -> Function:
    """The length of a JSON array column, computed by the database."""
    return func.jsonb_array_length(column) if _postgresql(session) else func.json_array_length(column)


def array_elements(session: Session, column, name: str):
    """A table of the array's elements (one text column, ``value``) to join each row with."""
    fn = func.jsonb_array_elements_text(column) if _postgresql(session) else func.json_each(column)
    return fn.table_valued("value", name=name)
