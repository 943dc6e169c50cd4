"""Sending webhooks: signed per Standard Webhooks, retried with backoff, every attempt recorded.

A delivery row (the outbox) is written in the transaction of the event it reports
(:mod:`app.webhooks.events`); once that commits, a ``candor.deliver_webhook`` message is sent on the
``cpu`` queue (in embedded mode, to an in-process thread). :func:`deliver` makes one attempt: it
claims the row with a conditional UPDATE (so duplicate messages send once), sends the request
without holding a database connection, and records the outcome. A 2xx answer delivers it; anything
else (another status, a timeout, a refused address, a connection error) schedules the next attempt
after the waits of ``CANDOR_WEBHOOK_RETRY_SECONDS``, after which the delivery is given up.

Retries are not timers in the broker: :func:`sweep`, run by ``candor beat`` (and by the reaper's
thread in embedded mode) every ``CANDOR_WEBHOOK_SWEEP_SECONDS``, sends a message for each delivery
that is due, so a retry, a lost message or a sender killed mid-request is picked up by the next
sweep.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpcore
from standardwebhooks import Webhook

from app.core.db import session_scope, utcnow
from app.core.settings import get_settings
from app.jobs import dispatch
from app.webhooks import repository as repo
from app.webhooks.addresses import RefusedAddress, check_host, target
from app.webhooks.models import WebhookAttempt

log = logging.getLogger("candor.webhooks")
SNIPPET_CHARS = 1000  # of a response body kept with its attempt
SWEEP_BATCH = 500
USER_AGENT = "Candor-Webhooks/1"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses :func:`app.webhooks.addresses.refusal` allows, and to the very
    address it checked: the host is resolved here, once, and the connection is made to that IP
    (TLS still verifies and sends the host name)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = check_host(host, port, self.allow_private)
        except RefusedAddress as exc:
            raise httpcore.ConnectError(f"refused: {exc}") from exc
        last: Exception | None = None
        for ip in addresses:
            try:
                return super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}")


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    response: str | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, msg_id: str, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: id, Unix timestamp and ``v1,<HMAC-SHA256>``."""
    at = at.astimezone(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")[:SNIPPET_CHARS]


def post(url: str, headers: dict[str, str], body: str) -> Outcome:
    """One POST, bounded by ``CANDOR_WEBHOOK_TIMEOUT_SECONDS`` in all; redirects are not followed."""
    settings = get_settings()
    limit = settings.webhook_timeout_seconds
    started = time.monotonic()

    def took() -> int:
        return round(1000 * (time.monotonic() - started))

    content = body.encode()
    sent = [("content-type", "application/json"), ("user-agent", USER_AGENT), *headers.items()]
    timeout = {"connect": limit, "read": limit, "write": limit, "pool": limit}
    try:
        target(url)  # its addresses are checked as it connects
        with (
            httpcore.ConnectionPool(network_backend=GuardedBackend(settings.webhook_allow_private)) as pool,
            pool.stream("POST", url, headers=sent, content=content, extensions={"timeout": timeout}) as response,
        ):
            raw = b""
            for chunk in response.iter_stream():
                raw += chunk
                if len(raw) >= 4 * SNIPPET_CHARS or time.monotonic() - started > limit:
                    break
            return Outcome(response.status, _text(raw), None, took())
    except RefusedAddress as exc:
        return Outcome(None, None, f"refused: {exc}", took())
    except httpcore.TimeoutException:
        return Outcome(None, None, f"no answer within {limit:g} s", took())
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
        return Outcome(None, None, str(exc) or type(exc).__name__, took())
    except Exception as exc:  # recorded as a failed attempt rather than lost with the task
        log.exception("webhook to %s: unexpected error", url)
        return Outcome(None, None, f"unexpected error ({type(exc).__name__})", took())


def next_wait(number: int) -> float | None:
    """Seconds before the attempt after attempt ``number`` (1-based); None once they are used up."""
    waits = get_settings().webhook_retry_seconds
    return waits[number - 1] if number <= len(waits) else None


def deliver(delivery_id: str | uuid.UUID, now: datetime | None = None) -> Outcome | None:
    """One attempt of a delivery if it is due at ``now``; None when there is nothing to do."""
    delivery_id = uuid.UUID(str(delivery_id))
    now = now or utcnow()
    busy = timedelta(seconds=3 * get_settings().webhook_timeout_seconds + 30)
    with session_scope() as session:
        claimed = repo.claim(session, delivery_id, now, now + busy)
    if claimed is None:
        return None
    number, body, url, secret, endpoint_id = claimed
    outcome = post(url, signed_headers(secret, str(delivery_id), body, utcnow()), body)
    finished = now + timedelta(milliseconds=outcome.duration_ms)
    wait = None if outcome.ok else next_wait(number)
    with session_scope() as session:
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                number=number,
                started_at=now,
                duration_ms=outcome.duration_ms,
                status_code=outcome.status_code,
                response=outcome.response,
                error=outcome.error,
            )
        )
        if outcome.ok:
            if repo.settle(session, delivery_id, number, status=DELIVERED, next_attempt_at=None, finished_at=finished):
                repo.endpoint_delivered(session, endpoint_id)
        elif wait is None:
            if repo.settle(session, delivery_id, number, status=FAILED, next_attempt_at=None, finished_at=finished):
                last = f"HTTP {outcome.status_code}" if outcome.status_code is not None else outcome.error
                if repo.endpoint_gave_up(session, endpoint_id, get_settings().webhook_disable_after, finished, last):
                    log.warning("webhook endpoint %s disabled after deliveries in a row were given up", endpoint_id)
        else:
            repo.settle(session, delivery_id, number, next_attempt_at=finished + timedelta(seconds=wait))
    log.info(
        "webhook %s attempt %d to %s: %s",
        delivery_id,
        number,
        url,
        outcome.status_code if outcome.status_code is not None else outcome.error,
    )
    return outcome


def send(delivery_id: uuid.UUID) -> None:
    """Hand a delivery to a worker (a thread in embedded mode)."""
    dispatch.get_dispatcher().send(dispatch.DELIVER_WEBHOOK, str(delivery_id))


def sweep(now: datetime | None = None) -> int:
    """Send a message for every delivery that is due (a retry, or one whose message was lost) and
    has had none sent for it lately; returns how many were sent."""
    now = now or utcnow()
    requeue_before = now - timedelta(seconds=3 * get_settings().webhook_timeout_seconds + 30)
    with session_scope() as session:
        ids = repo.due(session, now, requeue_before, SWEEP_BATCH)
    for delivery_id in ids:
        try:
            send(delivery_id)
        except Exception as exc:  # the broker is down: the next sweep sends them
            log.warning("webhook sweep: cannot send (%s); %d deliveries wait for the next run", exc, len(ids))
            break
    return len(ids)
