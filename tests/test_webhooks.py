"""Webhooks on the real database with a real HTTP receiver: registration and tenant scoping, the
outbox written with the job's terminal state, Standard Webhooks signatures (checked with the
`standardwebhooks` package and by hand), retries, the sweep, timeouts and refused addresses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from standardwebhooks import Webhook

from app.core.db import session_scope, utcnow
from app.core.settings import get_settings
from app.jobs import dispatch, states
from app.jobs.models import Job
from app.webhooks import delivery
from app.webhooks.addresses import refusal
from app.webhooks.models import WebhookAttempt, WebhookDelivery


class Receiver:
    """An HTTP server in a thread that records every request and answers with the next status of
    ``statuses`` (the last one repeats), after ``delay`` seconds."""

    def __init__(self, statuses=(200,), delay: float = 0.0):
        self.statuses = list(statuses)
        self.delay = delay
        self.requests: list[tuple[dict[str, str], str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                time.sleep(outer.delay)
                answer = f"receiver says {status}".encode()
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def allow_private(monkeypatch):
    """The receiver listens on loopback, which is refused unless allowed."""
    monkeypatch.setattr(get_settings(), "webhook_allow_private", True)


@pytest.fixture
def committed(database):
    """Real commits through the app's own sessions; every table emptied afterwards."""
    yield database
    with database.begin() as conn:
        conn.execute(text("TRUNCATE job_results, classifiers, job_chunks, jobs, datasets, tenants CASCADE"))


@pytest.fixture
def api(committed):
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


def new_key() -> dict[str, str]:
    from app.core.security import create_key

    with session_scope() as s:
        _, k = create_key(s, f"tenant-{uuid.uuid4().hex[:6]}")
    return {"Authorization": f"Bearer {k}"}


def tenant_of(key: dict[str, str]) -> uuid.UUID:
    from app.core.security import tenant_for_key

    with session_scope() as s:
        return tenant_for_key(s, key["Authorization"][7:], 0).id


def make_job(key: dict[str, str], state: str = states.TRAINING) -> uuid.UUID:
    from app.datasets.models import Dataset

    tenant_id = tenant_of(key)
    with session_scope() as s:
        ds = Dataset(tenant_id=tenant_id, name="d", classes=["a", "b"])
        s.add(ds)
        s.flush()
        job = Job(tenant_id=tenant_id, dataset_id=ds.id, state=state, config={}, config_hash="x", progress={})
        s.add(job)
        s.flush()
        return job.id


def register(api, key, url, events=("job.succeeded", "job.failed", "job.cancelled")) -> dict:
    r = api.post("/v1/webhooks", json={"url": url, "events": list(events)}, headers=key)
    assert r.status_code == 201, r.text
    return r.json()


def verify(secret: str, headers: dict[str, str], body: str) -> dict:
    """The payload, after checking the signature with standardwebhooks and again by hand."""
    payload = Webhook(secret).verify(body, headers)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == expected
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    return payload


def deliveries_sent(dispatcher) -> list[str]:
    return [args[0] for task, *args in dispatcher.sent if task == dispatch.DELIVER_WEBHOOK]


def delivery_row(delivery_id) -> WebhookDelivery:
    with session_scope() as s:
        return s.get(WebhookDelivery, uuid.UUID(str(delivery_id)))


# --- registration --------------------------------------------------------------------------------


def test_the_secret_is_shown_once_and_other_tenants_see_404(client, auth, other_auth, allow_private):
    created = client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["job.failed", "job.failed"]}, headers=auth
    )
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["secret"].startswith("whsec_") and len(base64.b64decode(hook["secret"][6:])) == 32
    assert hook["events"] == ["job.failed"] and hook["created_at"].endswith("Z")
    assert created.headers["location"] == f"/v1/webhooks/{hook['id']}"
    listed = client.get("/v1/webhooks", headers=auth)
    assert [h["id"] for h in listed.json()["items"]] == [hook["id"]]
    one = client.get(f"/v1/webhooks/{hook['id']}", headers=auth)
    assert one.json()["url"] == "http://127.0.0.1:9/x"
    for answer in (listed, one, client.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=auth)):
        assert answer.status_code == 200
        assert hook["secret"] not in answer.text and "secret" not in answer.text
    for path in (f"/v1/webhooks/{hook['id']}", f"/v1/webhooks/{hook['id']}/deliveries"):
        assert client.get(path, headers=other_auth).status_code == 404
    assert client.get("/v1/webhooks", headers=other_auth).json()["items"] == []
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=other_auth).status_code == 404
    assert client.delete(f"/v1/webhooks/{hook['id']}", headers=auth).status_code == 204
    gone = client.get(f"/v1/webhooks/{hook['id']}", headers=auth)
    assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/webhooks").status_code == 401


def test_list_pages_follow_the_cursor(client, auth, allow_private):
    ids = [
        client.post(
            "/v1/webhooks", json={"url": f"http://127.0.0.1:9/{i}", "events": ["job.failed"]}, headers=auth
        ).json()["id"]
        for i in range(3)
    ]
    first = client.get("/v1/webhooks", params={"limit": 2}, headers=auth).json()
    second = client.get("/v1/webhooks", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth).json()
    assert [h["id"] for h in first["items"] + second["items"]] == ids[::-1] and second["next_cursor"] is None


@pytest.mark.parametrize(
    ("url", "allow", "says"),
    [
        ("http://127.0.0.1:8080/x", False, "127.0.0.1 is a loopback address (CANDOR_WEBHOOK_ALLOW_PRIVATE allows it)"),
        ("http://localhost/x", False, "localhost resolves to"),
        ("http://10.1.2.3/x", False, "10.1.2.3 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", True, "169.254.169.254 is a cloud metadata address"),
        ("http://169.254.10.1/", True, "169.254.10.1 is a link-local address"),
        ("http://[fe80::1]/", True, "fe80::1 is a link-local address"),
        ("http://[::ffff:169.254.169.254]/", True, "a cloud metadata address"),
        ("http://0.0.0.0/", True, "not a unicast address"),
        ("http://candor-no-such-host.invalid/", True, "does not resolve"),
    ],
)
def test_refused_urls_answer_422_naming_the_url(client, auth, monkeypatch, url, allow, says):
    monkeypatch.setattr(get_settings(), "webhook_allow_private", allow)
    r = client.post("/v1/webhooks", json={"url": url, "events": ["job.succeeded"]}, headers=auth)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["detail"].startswith("url: ") and says in problem["detail"], problem
    assert problem["errors"][0]["loc"] == ["body", "url"]
    assert client.get("/v1/webhooks", headers=auth).json()["items"] == []


def test_malformed_bodies_answer_422(client, auth):
    for body in (
        {"url": "ftp://example.com/x", "events": ["job.failed"]},
        {"url": "https://example.com/x", "events": []},
        {"url": "https://example.com/x", "events": ["job.started"]},
        {"url": "https://example.com/" + "x" * 3000, "events": ["job.failed"]},
    ):
        r = client.post("/v1/webhooks", json=body, headers=auth)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", body


def test_address_policy():
    allowed_public = ["8.8.8.8", "2606:4700:4700::1111"]
    always_refused = [
        "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "169.254.1.1", "fe80::1",
        "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "224.0.0.1", "0.0.0.0", "::",
        "240.0.0.1",
    ]  # fmt: skip
    private = ["127.0.0.1", "::1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "fd12::1", "100.64.0.1", "::ffff:10.0.0.1"]
    for a in allowed_public:
        assert refusal(ipaddress.ip_address(a), allow_private=False) is None, a
    for a in always_refused:
        assert refusal(ipaddress.ip_address(a), allow_private=True) is not None, a
    for a in private:
        assert refusal(ipaddress.ip_address(a), allow_private=False) is not None, a
        assert refusal(ipaddress.ip_address(a), allow_private=True) is None, a


# --- delivery ------------------------------------------------------------------------------------


def run_steps(dispatcher, start: int = 0) -> None:
    """Run every recorded pipeline step and webhook delivery, and those they record, in order."""
    from app.jobs import pipeline

    steps = {
        dispatch.START: pipeline.start_job,
        dispatch.FEATURIZE: pipeline.featurize_chunk,
        dispatch.TRAIN: pipeline.train_job,
        dispatch.DELIVER_WEBHOOK: delivery.deliver,
    }
    i = start
    while i < len(dispatcher.sent):
        task, *args = dispatcher.sent[i]
        steps[task](*args)
        i += 1


def test_a_job_that_succeeds_sends_one_signed_delivery(api, dispatcher, receiver, allow_private):
    from tests.test_jobs_worker import CONFIG, upload

    key = new_key()
    hook = register(api, key, receiver.url, ["job.succeeded"])
    only_failures = Receiver()
    register(api, key, only_failures.url, ["job.failed"])
    stranger = new_key()
    strangers_receiver = Receiver()
    register(api, stranger, strangers_receiver.url)
    try:
        ds = upload(api, key, n=6)
        job_id = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key).json()["id"]
        run_steps(dispatcher)
        job = api.get(f"/v1/jobs/{job_id}", headers=key).json()
        assert job["state"] == "succeeded"
        assert len(deliveries_sent(dispatcher)) == 1
        assert len(receiver.requests) == 1 and only_failures.requests == strangers_receiver.requests == []
    finally:
        only_failures.close()
        strangers_receiver.close()
    headers, body = receiver.requests[0]
    assert headers["content-type"] == "application/json"
    payload = verify(hook["secret"], headers, body)
    assert headers["webhook-id"] == deliveries_sent(dispatcher)[0]
    assert payload["type"] == "job.succeeded" and payload["timestamp"] == job["finished_at"].replace("+00:00", "Z")
    assert payload["data"] == {
        "job_id": job_id,
        "dataset_id": ds,
        "state": "succeeded",
        "error": None,
        "classifier_id": job["classifier_id"],
        "links": {
            "job": f"/v1/jobs/{job_id}",
            "labels": f"/v1/jobs/{job_id}/labels",
            "classifier": f"/v1/classifiers/{job['classifier_id']}",
        },
    }
    with pytest.raises(Exception, match="signature"):
        Webhook(hook["secret"]).verify(body.replace("succeeded", "failed"), headers)
    listed = api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=key).json()["items"]
    assert len(listed) == 1
    d = listed[0]
    assert d["status"] == "delivered" and d["attempt_count"] == 1 and d["next_attempt_at"] is None
    assert d["payload"] == payload and d["event"] == "job.succeeded" and d["finished_at"].endswith("Z")
    assert [(a["number"], a["status_code"], a["response"], a["error"]) for a in d["attempts"]] == [
        (1, 200, "receiver says 200", None)
    ]


def test_500_then_200_is_retried_and_both_attempts_are_listed(api, dispatcher, allow_private):
    receiver = Receiver(statuses=[500, 200])
    try:
        key = new_key()
        hook = register(api, key, receiver.url)
        job_id = make_job(key)
        with session_scope() as s:
            assert states.finish(s, job_id, states.FAILED, error="out of memory")
        [delivery_id] = deliveries_sent(dispatcher)
        now = utcnow()
        first = delivery.deliver(delivery_id, now=now)
        assert first.status_code == 500 and not first.ok
        row = delivery_row(delivery_id)
        wait = get_settings().webhook_retry_seconds[0]
        assert row.status == "pending" and row.attempts == 1
        assert timedelta(seconds=wait) <= row.next_attempt_at - now <= timedelta(seconds=wait + 5)
        assert delivery.deliver(delivery_id, now=now) is None  # not due yet: no request
        assert delivery.sweep(now=now) == 0
        later = row.next_attempt_at + timedelta(seconds=1)
        assert delivery.sweep(now=later) == 1 and deliveries_sent(dispatcher) == [delivery_id, delivery_id]
        assert delivery.sweep(now=later) == 0  # a message is on its way: not sent twice
        second = delivery.deliver(delivery_id, now=later)
        assert second.status_code == 200 and second.ok
        assert delivery.deliver(delivery_id, now=later + timedelta(days=1)) is None  # settled
        assert len(receiver.requests) == 2
        (h1, b1), (h2, b2) = receiver.requests
        assert h1["webhook-id"] == h2["webhook-id"] == delivery_id and b1 == b2
        for h, b in receiver.requests:
            payload = verify(hook["secret"], h, b)
        assert payload["type"] == "job.failed" and payload["data"]["error"] == "out of memory"
        assert payload["data"]["classifier_id"] is None and "labels" not in payload["data"]["links"]
        [d] = api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=key).json()["items"]
        assert d["status"] == "delivered" and d["attempt_count"] == 2 and d["next_attempt_at"] is None
        assert [(a["number"], a["status_code"], a["response"]) for a in d["attempts"]] == [
            (1, 500, "receiver says 500"),
            (2, 200, "receiver says 200"),
        ]
    finally:
        receiver.close()


def test_next_attempt_time_is_listed_while_pending_and_the_delivery_is_given_up_after_the_schedule(
    api, dispatcher, monkeypatch, allow_private
):
    monkeypatch.setattr(get_settings(), "webhook_retry_seconds", [60.0, 600.0])
    receiver = Receiver(statuses=[503])
    try:
        key = new_key()
        hook = register(api, key, receiver.url, ["job.cancelled"])
        job_id = make_job(key, states.QUEUED)
        assert api.post(f"/v1/jobs/{job_id}/cancel", headers=key).json()["state"] == "cancelled"
        [delivery_id] = deliveries_sent(dispatcher)
        now = utcnow()
        delivery.deliver(delivery_id, now=now)
        [d] = api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=key).json()["items"]
        assert d["status"] == "pending" and d["next_attempt_at"].endswith("Z")
        assert d["next_attempt_at"] == delivery_row(delivery_id).next_attempt_at.isoformat().replace("+00:00", "Z")
        for offset in (61, 61 + 601):
            assert delivery.deliver(delivery_id, now=now + timedelta(seconds=offset)).status_code == 503
        assert delivery.deliver(delivery_id, now=now + timedelta(days=30)) is None
        row = delivery_row(delivery_id)
        assert row.status == "failed" and row.attempts == 3 and row.next_attempt_at is None
        assert len(receiver.requests) == 3
        assert verify(hook["secret"], *receiver.requests[0])["type"] == "job.cancelled"
    finally:
        receiver.close()


def test_an_endpoint_whose_deliveries_are_given_up_in_a_row_is_disabled_until_enabled(
    api, dispatcher, monkeypatch, allow_private
):
    monkeypatch.setattr(get_settings(), "webhook_retry_seconds", [60.0])  # two attempts a delivery
    monkeypatch.setattr(get_settings(), "webhook_disable_after", 2)
    receiver = Receiver(statuses=[503])
    try:
        key = new_key()
        hook = register(api, key, receiver.url, ["job.failed"])

        def fail_a_job() -> list[str]:
            with session_scope() as s:
                assert states.finish(s, make_job(key), states.FAILED, error="x")
            return deliveries_sent(dispatcher)

        now = utcnow() + timedelta(minutes=1)  # after every delivery this test writes is due
        later = now + timedelta(seconds=61)
        first = fail_a_job()[-1]
        delivery.deliver(first, now=now)
        assert delivery.deliver(first, now=later).status_code == 503
        assert delivery_row(first).status == "failed"
        assert api.get(f"/v1/webhooks/{hook['id']}", headers=key).json()["enabled"] is True  # one in a row
        second = fail_a_job()[-1]
        third = fail_a_job()[-1]
        delivery.deliver(third, now=now)  # third is pending, due again at `later`
        delivery.deliver(second, now=now)
        delivery.deliver(second, now=later)  # the second given up in a row: disabled
        got = api.get(f"/v1/webhooks/{hook['id']}", headers=key).json()
        assert got["enabled"] is False and got["disabled_at"].endswith("Z")
        assert got["disabled_reason"] == (
            "disabled after 2 deliveries in a row were given up; the last attempt: HTTP 503"
        )
        [listed] = [w for w in api.get("/v1/webhooks", headers=key).json()["items"] if w["id"] == hook["id"]]
        assert listed["enabled"] is False
        # a disabled endpoint: its pending delivery waits, a new event writes nothing for it
        requests_so_far = len(receiver.requests)
        far = now + timedelta(days=1)
        assert delivery.sweep(now=far) == 0 and delivery.deliver(third, now=far) is None
        sent = len(deliveries_sent(dispatcher))
        assert len(fail_a_job()) == sent
        assert len(receiver.requests) == requests_so_far
        assert delivery_row(third).status == "pending"
        # another tenant cannot enable it; its owner can, and the pending delivery goes out
        assert api.post(f"/v1/webhooks/{hook['id']}/enable", headers=new_key()).status_code == 404
        receiver.statuses = [200]
        enabled = api.post(f"/v1/webhooks/{hook['id']}/enable", headers=key)
        assert enabled.status_code == 200 and enabled.json()["enabled"] is True
        assert enabled.json()["disabled_reason"] is None
        assert delivery.sweep(now=far) == 1 and deliveries_sent(dispatcher)[-1] == third
        assert delivery.deliver(third, now=far).ok and delivery_row(third).status == "delivered"
        assert len(fail_a_job()) == sent + 2  # the sweep's message, then the new event's
    finally:
        receiver.close()


def test_links_are_absolute_when_the_public_url_is_set(api, dispatcher, monkeypatch, allow_private):
    from app.core.settings import Settings

    monkeypatch.setattr(get_settings(), "public_url", "https://candor.example.com")
    key = new_key()
    register(api, key, "http://127.0.0.1:9/hook", ["job.failed"])
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.FAILED, error="x")
    [delivery_id] = deliveries_sent(dispatcher)
    payload = json.loads(delivery_row(delivery_id).payload)
    assert payload["data"]["links"] == {"job": f"https://candor.example.com/v1/jobs/{job_id}"}
    assert Settings(public_url="https://c.example.com/base/").public_url == "https://c.example.com/base"
    with pytest.raises(ValueError, match="CANDOR_PUBLIC_URL must be an http"):
        Settings(public_url="ftp://c.example.com")


def test_an_answer_slower_than_the_timeout_is_a_failed_attempt(api, dispatcher, monkeypatch, allow_private):
    monkeypatch.setattr(get_settings(), "webhook_timeout_seconds", 0.5)
    receiver = Receiver(delay=3.0)
    try:
        key = new_key()
        register(api, key, receiver.url)
        job_id = make_job(key)
        with session_scope() as s:
            assert states.finish(s, job_id, states.FAILED, error="x")
        [delivery_id] = deliveries_sent(dispatcher)
        started = time.monotonic()
        outcome = delivery.deliver(delivery_id)
        assert time.monotonic() - started < 2.5
        assert outcome.status_code is None and outcome.error == "no answer within 0.5 s"
        assert delivery_row(delivery_id).status == "pending"
    finally:
        receiver.close()


def test_an_address_allowed_at_registration_is_checked_again_at_delivery(
    api, dispatcher, receiver, monkeypatch, allow_private
):
    key = new_key()
    register(api, key, receiver.url)
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.FAILED, error="x")
    monkeypatch.setattr(get_settings(), "webhook_allow_private", False)
    outcome = delivery.deliver(deliveries_sent(dispatcher)[0])
    assert outcome.status_code is None and receiver.requests == []
    assert outcome.error.startswith("refused: 127.0.0.1 is a loopback address")
    with session_scope() as s:
        attempt = s.scalar(select(WebhookAttempt))
        assert attempt.error == outcome.error and attempt.status_code is None


def test_a_rolled_back_state_change_writes_and_sends_nothing(api, dispatcher, receiver, allow_private):
    key = new_key()
    register(api, key, receiver.url)
    job_id = make_job(key)
    with pytest.raises(RuntimeError), session_scope() as s:
        assert states.finish(s, job_id, states.FAILED, error="x")
        raise RuntimeError("the rest of the unit of work failed")
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
        assert s.scalar(select(Job.state).where(Job.id == job_id)) == states.TRAINING
    assert deliveries_sent(dispatcher) == []


def test_a_lost_message_is_sent_again_by_the_sweep(api, dispatcher, receiver, allow_private):
    key = new_key()
    hook = register(api, key, receiver.url)
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.SUCCEEDED)
    [delivery_id] = deliveries_sent(dispatcher)  # this message is lost: never run
    now = utcnow()
    assert delivery.sweep(now=now) == 0  # it was sent a moment ago and may still be waiting for a worker
    requeue = 3 * get_settings().webhook_timeout_seconds + 30
    assert delivery.sweep(now=now + timedelta(seconds=requeue + 1)) == 1
    assert deliveries_sent(dispatcher) == [delivery_id, delivery_id]
    run_steps(dispatcher, start=1)
    assert verify(hook["secret"], *receiver.requests[0])["data"]["job_id"] == str(job_id)
    assert delivery_row(delivery_id).status == "delivered"


def test_a_sender_killed_mid_request_leaves_the_delivery_due_again(api, dispatcher, receiver, allow_private):
    key = new_key()
    register(api, key, receiver.url)
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.SUCCEEDED)
    [delivery_id] = deliveries_sent(dispatcher)
    from app.webhooks import repository

    now = utcnow()
    with session_scope() as s:  # what deliver does before its request; then the process dies
        busy = now + timedelta(seconds=60)
        assert repository.claim(s, uuid.UUID(delivery_id), now, busy) is not None
    assert delivery.deliver(delivery_id, now=now) is None and delivery.sweep(now=now) == 0
    assert delivery.sweep(now=busy + timedelta(seconds=1)) == 1
    assert delivery.deliver(delivery_id, now=busy + timedelta(seconds=1)).ok
    assert delivery_row(delivery_id).attempts == 2 and len(receiver.requests) == 1


def test_deleting_a_webhook_removes_its_pending_deliveries(api, dispatcher, receiver, allow_private):
    key = new_key()
    hook = register(api, key, receiver.url)
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.SUCCEEDED)
    [delivery_id] = deliveries_sent(dispatcher)
    assert api.delete(f"/v1/webhooks/{hook['id']}", headers=key).status_code == 204
    assert delivery.deliver(delivery_id) is None and receiver.requests == []


def test_embedded_mode_delivers_from_a_thread_of_its_own(api, monkeypatch, receiver, allow_private):
    inline = dispatch.InlineDispatcher()
    monkeypatch.setattr(dispatch, "get_dispatcher", lambda: inline)
    key = new_key()
    hook = register(api, key, receiver.url)
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.SUCCEEDED)
    deadline = time.monotonic() + 20
    while not receiver.requests:
        assert time.monotonic() < deadline, "no delivery arrived"
        time.sleep(0.05)
    assert verify(hook["secret"], *receiver.requests[0])["data"]["job_id"] == str(job_id)


def test_the_embedded_reaper_thread_runs_the_sweep(api, dispatcher, receiver, allow_private):
    from app.jobs.reaper import ReaperThread

    key = new_key()
    register(api, key, receiver.url)
    job_id = make_job(key)
    with session_scope() as s:
        assert states.finish(s, job_id, states.SUCCEEDED)
    [delivery_id] = deliveries_sent(dispatcher)
    with session_scope() as s:  # its message was lost long ago
        s.execute(update(WebhookDelivery).values(queued_at=utcnow() - timedelta(hours=1)))
    thread = ReaperThread(interval=0.05)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(deliveries_sent(dispatcher)) < 2:
            assert time.monotonic() < deadline, "the sweep never ran"
            time.sleep(0.05)
    finally:
        thread.stop()
        thread.join(5)
    assert deliveries_sent(dispatcher)[1] == delivery_id


@pytest.fixture(scope="module")
def celery_worker():
    """An embedded Celery worker (solo pool, in a thread) on the real Redis broker, cpu queue."""
    import redis
    from celery.contrib.testing.worker import start_worker

    from worker.celery_app import celery_app

    redis.Redis.from_url(get_settings().broker_url).flushdb()
    with start_worker(celery_app, pool="solo", perform_ping_check=False, queues=["cpu"], shutdown_timeout=30) as w:
        yield w


def test_a_celery_worker_delivers_the_message_sent_after_commit(api, receiver, allow_private, celery_worker):
    key = new_key()
    hook = register(api, key, receiver.url)
    job_id = make_job(key, states.QUEUED)
    with session_scope() as s:
        assert states.finish(s, job_id, states.CANCELLED)
    deadline = time.monotonic() + 30
    while not receiver.requests:
        assert time.monotonic() < deadline, "no delivery arrived"
        time.sleep(0.1)
    payload = verify(hook["secret"], *receiver.requests[0])
    assert payload["type"] == "job.cancelled" and payload["data"]["job_id"] == str(job_id)
    deadline = time.monotonic() + 10
    while delivery_row(receiver.requests[0][0]["webhook-id"]).status != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert len(receiver.requests) == 1


def test_outbox_retry_and_sweep_on_sqlite(tmp_path, monkeypatch, allow_private):
    """Embedded mode's database: the outbox insert, the claim, the retry, the sweep and the
    deliveries page (naive SQLite timestamps come back in UTC with a Z)."""
    from contextlib import contextmanager

    from sqlalchemy.orm import Session

    from app.core.db import make_engine
    from app.core.migrate import upgrade
    from app.core.security import TenantRef, create_key
    from app.datasets.models import Dataset
    from app.webhooks import service
    from app.webhooks.schemas import WebhookCreate
    from tests.service_fixtures import RecordingDispatcher

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = make_engine(url)

    @contextmanager
    def scope():
        with Session(engine) as s:
            yield s
            s.commit()

    monkeypatch.setattr(delivery, "session_scope", scope)
    recorder = RecordingDispatcher()
    monkeypatch.setattr(dispatch, "get_dispatcher", lambda: recorder)
    receiver = Receiver(statuses=[500, 200])
    try:
        with scope() as s:
            tenant_row, _ = create_key(s, "acme")
            tenant = TenantRef(id=tenant_row.id, name="acme")
            hook = service.create_endpoint(s, tenant, WebhookCreate(url=receiver.url, events=["job.cancelled"]))
            ds = Dataset(tenant_id=tenant.id, name="d", classes=["a", "b"])
            s.add(ds)
            s.flush()
            job = Job(tenant_id=tenant.id, dataset_id=ds.id, state="queued", config={}, config_hash="x", progress={})
            s.add(job)
            s.flush()
            hook_id, secret, job_id = hook.id, hook.secret, job.id
        with scope() as s:
            assert states.finish(s, job_id, states.CANCELLED)
        [delivery_id] = deliveries_sent(recorder)
        now = utcnow()
        assert delivery.deliver(delivery_id, now=now).status_code == 500
        assert delivery.sweep(now=now) == 0
        later = now + timedelta(seconds=get_settings().webhook_retry_seconds[0] + 5)
        assert delivery.sweep(now=later) == 1 and deliveries_sent(recorder) == [delivery_id, delivery_id]
        assert delivery.deliver(delivery_id, now=later).ok
        assert [verify(secret, h, b)["type"] for h, b in receiver.requests] == ["job.cancelled"] * 2
        with scope() as s:
            page = service.deliveries(s, tenant, hook_id, None, 10).model_dump(mode="json")
        [d] = page["items"]
        assert d["status"] == "delivered" and [a["status_code"] for a in d["attempts"]] == [500, 200]
        assert d["created_at"].endswith("Z") and d["attempts"][0]["started_at"].endswith("Z")
    finally:
        receiver.close()
        engine.dispose()
