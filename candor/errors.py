"""Exceptions raised by the client. An error answer of the service (RFC 9457 problem+json) becomes
a ``CandorError`` subclass chosen by its status, carrying the problem's fields; the message is the
problem's title and detail."""

from __future__ import annotations

from typing import Any

import httpx

from candor.models import ItemOutcome, Job


class CandorError(Exception):
    """Any error of the client or the service. ``problem`` is the problem document (empty when the
    error did not come from the service)."""

    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        self.problem: dict[str, Any] = problem or {}

    @property
    def title(self) -> str | None:
        return self.problem.get("title")

    @property
    def detail(self) -> str | None:
        return self.problem.get("detail")

    @property
    def type(self) -> str | None:
        return self.problem.get("type")

    @property
    def instance(self) -> str | None:
        return self.problem.get("instance")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Request validation errors: ``{loc, msg, type}`` each (the problem's ``errors`` extension)."""
        errors = self.problem.get("errors")
        return errors if isinstance(errors, list) else []

    @property
    def items(self) -> list[ItemOutcome]:
        """An upload's outcome per item, the rejected ones with their reason (the ``items`` extension)."""
        items = self.problem.get("items")
        return [ItemOutcome.model_validate(i) for i in items] if isinstance(items, list) else []


class BadRequest(CandorError):
    status = 400


class Unauthorized(CandorError):
    status = 401


class Forbidden(CandorError):
    status = 403


class NotFound(CandorError):
    status = 404


class Conflict(CandorError):
    status = 409


class PayloadTooLarge(CandorError):
    status = 413


class UnsupportedMediaType(CandorError):
    status = 415


class ValidationFailed(CandorError):
    """422: the request or an upload was refused; see ``items`` (per-item reasons) and ``errors``."""

    status = 422

    @property
    def rejected(self) -> list[ItemOutcome]:
        return [i for i in self.items if i.status == "rejected"]


class RateLimited(CandorError):
    status = 429


class ServerError(CandorError):
    status = 500


class Unavailable(ServerError):
    """503: a dependency of the service is down; retried with backoff before it is raised."""

    status = 503


class ConnectionFailed(CandorError):
    """The service could not be reached (after the retries)."""


class InvalidSource(CandorError, ValueError):
    """A local folder, manifest or ZIP the client cannot upload (a missing image, a bad line)."""


class JobFailed(CandorError):
    """``wait()`` saw the job end in ``failed`` or ``cancelled``; ``job`` is its last state."""

    def __init__(self, message: str, job: Job):
        super().__init__(message)
        self.job = job


class WaitTimeout(CandorError, TimeoutError):
    """``wait()`` gave up before the job ended; ``job`` is its last state (the job goes on)."""

    def __init__(self, message: str, job: Job):
        super().__init__(message)
        self.job = job


BY_STATUS: dict[int, type[CandorError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationFailed,
        RateLimited,
        ServerError,
        Unavailable,
    )
    if cls.status is not None
}


def from_response(response: httpx.Response) -> CandorError:
    """The exception for an error answer; the body must have been read."""
    status = response.status_code
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    title = problem.get("title") if isinstance(problem.get("title"), str) else None
    detail = problem.get("detail") if isinstance(problem.get("detail"), str) else None
    if title is None:
        title = f"HTTP {status} {response.reason_phrase}".strip()
        if not problem:
            text = response.text.strip()
            detail = text[:300] if text else None
    message = f"{title}: {detail}" if detail else title
    cls = BY_STATUS.get(status) or (ServerError if status >= 500 else CandorError)
    return cls(message, status=status, problem=problem)
