"""Unit-of-work helpers: run callbacks (queue messages) only after the transaction commits."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

_KEY = "candor_after_commit"
log = logging.getLogger("candor.uow")


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run ``fn`` once the session's transaction has committed; dropped on rollback."""
    session.info.setdefault(_KEY, []).append(fn)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    pending = session.info.pop(_KEY, [])
    for fn in pending:
        try:
            fn()
        except Exception:  # the commit stands; one failed send must not stop the others
            log.exception("after-commit callback %r failed", fn)


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)
