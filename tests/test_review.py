"""Reviews through the API and the web UI's HTTP side, against a real service and worker: the queue
in benefit order, decisions as an audit trail (the latest counts), the labels export, the next job
honouring the decisions, 4xx for bad decisions with nothing stored, CSRF rejection, the session
cookie's flags, and another tenant seeing none of it."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
from sqlalchemy import func, select

from tests.review_service import labels, make_trained, other_key, start_job, wait_job  # noqa: F401
from tests.sdk_service import celery_worker, new_key, serve, service_url, stop  # noqa: F401


@pytest.fixture(scope="module")
def trained(service_url, celery_worker):  # noqa: F811
    return make_trained(service_url, "review-api")


def review_count() -> int:
    from app.core.db import session_scope
    from app.review.models import Review

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Review))


def post_review(t, item_id: str, **body) -> httpx.Response:
    return httpx.post(f"{t.base}/v1/jobs/{t.job_id}/reviews", headers=t.auth, json={"item_id": item_id} | body)


def signed_in(base: str, key: str) -> httpx.Client:
    """An HTTP client holding a web UI session for ``key``."""
    c = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    page = c.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = c.post("/ui/login", data={"key": key, "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/datasets", r.text
    return c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_the_queue_comes_in_benefit_order_and_drops_an_item_once_decided(trained):
    r = httpx.get(f"{trained.base}/v1/jobs/{trained.job_id}/review-queue?limit=1000", headers=trained.auth)
    assert r.status_code == 200, r.text
    q = r.json()
    benefits = [i["benefit"] for i in q["items"]]
    assert benefits == sorted(benefits, reverse=True)
    assert [i["rank"] for i in q["items"]] == list(range(1, len(benefits) + 1))
    assert q["remaining"] + q["reviewed"] == len(trained.candidates)
    # the top item is one the model is least sure of (or whose set is suspect)
    rows = labels(trained.base, trained.auth, trained.job_id)
    top = q["items"][0]
    assert (
        top["confidence"] == min(r["confidence"] for r in rows.values() if len(r["posterior"]) > 1)
        or (top["candidates_suspect"])
    )
    first = top["id"]
    r = post_review(trained, first, label=trained.truth[first])
    assert r.status_code == 201, r.text
    after = httpx.get(f"{trained.base}/v1/jobs/{trained.job_id}/review-queue?limit=1000", headers=trained.auth).json()
    assert first not in [i["id"] for i in after["items"]]
    assert (after["remaining"], after["reviewed"]) == (q["remaining"] - 1, q["reviewed"] + 1)


def test_labels_in_review_order_follow_the_queue_and_unranked_results_are_ranked_on_first_use(trained):
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.jobs.models import JobResult

    def queue() -> list[tuple[str, float]]:
        r = httpx.get(f"{trained.base}/v1/jobs/{trained.job_id}/review-queue?limit=1000", headers=trained.auth)
        assert r.status_code == 200, r.text
        return [(i["id"], i["benefit"]) for i in r.json()["items"]]

    def review_ordered() -> list[dict]:
        r = httpx.get(f"{trained.base}/v1/jobs/{trained.job_id}/labels?order=review", headers=trained.auth)
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.text.splitlines()]

    def stored() -> dict[str, tuple]:
        with session_scope() as s:
            rows = s.execute(
                select(JobResult.external_id, JobResult.review_rank, JobResult.review_benefit).where(
                    JobResult.job_id == trained.job_id
                )
            ).all()
        return {i: (rank, benefit) for i, rank, benefit in rows}

    before, ranks = queue(), stored()
    assert sorted(rank for rank, _ in ranks.values()) == list(range(1, len(trained.candidates) + 1))
    rows = review_ordered()
    assert [r["id"] for r in rows] == sorted(ranks, key=lambda i: ranks[i][0])  # every row, reviewed ones too
    assert [(r["id"], round(ranks[r["id"]][1], 6)) for r in rows if not r["reviewed"]] == before
    # results stored without ranks (before migration 0011): the queue ranks them once, the same way
    with session_scope() as s:
        s.execute(
            update(JobResult).where(JobResult.job_id == trained.job_id).values(review_rank=None, review_benefit=None)
        )
    assert set(stored().values()) == {(None, None)}
    assert queue() == before
    again = stored()
    assert {i: rank for i, (rank, _) in again.items()} == {i: rank for i, (rank, _) in ranks.items()}
    assert all(abs(again[i][1] - ranks[i][1]) < 1e-9 for i in ranks)


def test_every_decision_is_kept_with_reviewer_and_time_and_the_latest_counts_in_the_export(trained):
    item = "fm-05"
    first = post_review(trained, item, label=trained.candidates[item][1])
    second = post_review(trained, item, none_of_these=True)
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert second.json()["id"] > first.json()["id"]
    prefix = trained.key[:12]
    assert second.json()["reviewer"] == f"{trained.tenant}/{prefix}"
    assert second.json()["created_at"].endswith("Z")
    trail = httpx.get(
        f"{trained.base}/v1/jobs/{trained.job_id}/reviews", params={"item_id": item}, headers=trained.auth
    ).json()
    assert [(d["label"], d["none_of_these"]) for d in trail["items"]] == [
        (trained.candidates[item][1], False),
        (None, True),
    ]
    latest = httpx.get(
        f"{trained.base}/v1/jobs/{trained.job_id}/reviews", params={"latest": "true"}, headers=trained.auth
    ).json()["items"]
    assert [d["none_of_these"] for d in latest if d["item_id"] == item] == [True]
    rows = labels(trained.base, trained.auth, trained.job_id)
    assert rows[item]["reviewed"] is True and rows[item]["reviewed_none_of_these"] is True
    assert rows[item]["reviewed_label"] is None
    assert rows["fm-23"]["reviewed"] is False
    csv = httpx.get(f"{trained.base}/v1/jobs/{trained.job_id}/labels?format=csv", headers=trained.auth).text
    assert csv.splitlines()[0].endswith("reviewed,reviewed_label,reviewed_none_of_these")


def test_bad_decisions_answer_4xx_naming_the_item_and_store_nothing(trained):
    before = review_count()
    cases = [
        ("fm-01", {"label": "unicorn"}, 422, "label 'unicorn' is not among the dataset's classes"),
        ("fm-01", {"label": "trouser", "none_of_these": True}, 422, "not both"),
        ("fm-01", {}, 422, "give a label"),
        ("nope", {"label": "trouser"}, 404, "item nope is not among the items of job"),
    ]
    for item, body, status, words in cases:
        r = post_review(trained, item, **body)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert words in r.json()["detail"]
        assert f"item {item}" in r.json()["detail"]
    r = httpx.post(f"{trained.base}/v1/jobs/{trained.job_id}/reviews", headers=trained.auth, json={"item_id": ""})
    assert r.status_code == 422
    r = httpx.get(f"{trained.base}/v1/jobs/{trained.job_id}/reviews?cursor=zzz", headers=trained.auth)
    assert r.status_code == 400
    assert review_count() == before


def test_the_next_job_takes_a_reviewed_label_as_the_set_and_none_of_these_as_the_other_classes(trained):
    chosen, rejected = "fm-10", "fm-11"
    outside = next(c for c in trained.classes if c not in trained.candidates[chosen])
    assert post_review(trained, chosen, label=outside).status_code == 201
    assert post_review(trained, rejected, none_of_these=True).status_code == 201
    job2 = start_job(trained.base, trained.auth, trained.dataset_id)
    wait_job(trained.base, trained.auth, job2)
    rows = labels(trained.base, trained.auth, job2)
    assert rows[chosen]["posterior"] == {outside: 1.0} and rows[chosen]["label"] == outside
    rest = {c for c in trained.classes if c not in trained.candidates[rejected]}
    assert set(rows[rejected]["posterior"]) == rest
    untouched = "fm-20"
    assert set(rows[untouched]["posterior"]) == set(trained.candidates[untouched])
    # the decisions show in the new job's export as well, and it has its own queue without them
    assert rows[chosen]["reviewed"] and rows[chosen]["reviewed_label"] == outside
    q = httpx.get(f"{trained.base}/v1/jobs/{job2}/review-queue?limit=1000", headers=trained.auth).json()
    assert chosen not in [i["id"] for i in q["items"]] and rejected not in [i["id"] for i in q["items"]]
    # "none of these" on job2 rejects what job2 showed ({outside}), not the item's stored candidates
    again = httpx.post(
        f"{trained.base}/v1/jobs/{job2}/reviews", headers=trained.auth, json={"item_id": chosen, "none_of_these": True}
    )
    assert again.status_code == 201, again.text
    job3 = start_job(trained.base, trained.auth, trained.dataset_id)
    wait_job(trained.base, trained.auth, job3)
    assert set(labels(trained.base, trained.auth, job3)[chosen]["posterior"]) == set(trained.classes) - {outside}


def test_another_tenant_sees_none_of_it(trained, other_key):  # noqa: F811
    other = {"Authorization": f"Bearer {other_key}"}
    base, job = trained.base, trained.job_id
    for r in (
        httpx.get(f"{base}/v1/jobs/{job}/review-queue", headers=other),
        httpx.get(f"{base}/v1/jobs/{job}/reviews", headers=other),
        httpx.post(f"{base}/v1/jobs/{job}/reviews", headers=other, json={"item_id": "fm-01", "label": "trouser"}),
    ):
        assert r.status_code == 404, r.text
        assert trained.tenant not in r.text
    ui = signed_in(base, other_key)
    page = ui.get("/ui/datasets")
    assert page.status_code == 200 and "review-api" not in page.text and 'id="no-datasets"' in page.text
    for path in (f"/ui/jobs/{job}", f"/ui/jobs/{job}/report", f"/ui/jobs/{job}/review", f"/ui/jobs/{job}/status"):
        r = ui.get(path)
        assert r.status_code == 404, path
    seq = re.search(r"/images/(\d+)", signed_in(base, trained.key).get(f"/ui/jobs/{job}/review").text).group(1)
    assert ui.get(f"/ui/jobs/{job}/images/{seq}").status_code == 404
    assert signed_in(base, trained.key).get(f"/ui/jobs/{job}/images/{seq}").headers["content-type"] == "image/png"


def test_the_session_cookie_is_httponly_samesite_strict_and_never_holds_the_key(trained):
    c = httpx.Client(base_url=trained.base, timeout=30)
    page = c.get("/ui/login")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    r = c.post("/ui/login", data={"key": trained.key, "csrf": csrf_of(page.text)}, follow_redirects=False)
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("candor_session="))
    flags = {p.strip().lower() for p in cookie.split(";")[1:]}
    assert "httponly" in flags and "samesite=strict" in flags and "path=/ui" in flags
    assert "secure" not in flags  # CANDOR_UI_COOKIE_SECURE is off by default
    assert trained.key not in cookie and trained.key[4:20] not in cookie
    # a tampered cookie is no session
    value = cookie.split(";")[0].split("=", 1)[1]
    forged = httpx.get(
        f"{trained.base}/ui/datasets", cookies={"candor_session": value[:-2] + "00"}, follow_redirects=False
    )
    assert forged.status_code == 303 and forged.headers["location"] == "/ui/login"
    # a wrong key is refused with the form again, and no session
    page = c.get("/ui/login")
    r = c.post("/ui/login", data={"key": "cnd_wrong", "csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 401 and "unknown or revoked API key" in r.text
    assert "candor_session=" not in r.headers.get("set-cookie", "")


def test_the_cookie_is_secure_when_configured(database, tmp_path):
    proc, base = serve(os.environ | {"CANDOR_UI_COOKIE_SECURE": "1"}, tmp_path / "serve.log")
    try:
        key = new_key("review-secure")
        c = httpx.Client(base_url=base, timeout=30)
        page = c.get("/ui/login")
        pre = page.headers["set-cookie"].lower()
        nonce = page.headers["set-cookie"].split(";")[0].split("=", 1)[1]  # httpx keeps no Secure cookie over http
        r = c.post(
            "/ui/login",
            data={"key": key, "csrf": csrf_of(page.text)},
            headers={"Cookie": f"candor_signin={nonce}"},
            follow_redirects=False,
        )
        cookie = ";".join(v for k, v in r.headers.multi_items() if k == "set-cookie").lower()
    finally:
        stop(proc)
    assert "; secure" in pre
    assert "candor_session=" in cookie and "; secure" in cookie and "httponly" in cookie


def test_forms_without_the_csrf_token_are_refused_and_store_nothing(trained):
    before = review_count()
    ui = signed_in(trained.base, trained.key)
    page = ui.get(f"/ui/jobs/{trained.job_id}/review")
    item = re.search(r'name="item_id" value="([^"]+)"', page.text).group(1)
    good = csrf_of(page.text)
    for token in ("", "0" * 64, good[:-1] + ("0" if good[-1] != "0" else "1")):
        r = ui.post(f"/ui/jobs/{trained.job_id}/review", data={"item_id": item, "choice": "trouser", "csrf": token})
        assert r.status_code == 403, token
        assert "CSRF" in r.text
    assert review_count() == before
    # another tenant's token does not do either
    other_ui = signed_in(trained.base, new_key("review-csrf-other"))
    foreign = csrf_of(other_ui.get("/ui/datasets").text)
    r = ui.post(f"/ui/jobs/{trained.job_id}/review", data={"item_id": item, "choice": "trouser", "csrf": foreign})
    assert r.status_code == 403
    # sign-in without the form's token, and sign-out without a token
    fresh = httpx.Client(base_url=trained.base, timeout=30)
    r = fresh.post("/ui/login", data={"key": trained.key, "csrf": "x"}, follow_redirects=False)
    assert r.status_code == 403 and "candor_session=" not in r.headers.get("set-cookie", "")
    assert ui.post("/ui/logout", data={}).status_code == 403
    assert ui.get("/ui/datasets").status_code == 200  # still signed in
    # the right token records the decision
    r = ui.post(f"/ui/jobs/{trained.job_id}/review", data={"item_id": item, "choice": "trouser", "csrf": good})
    assert r.status_code == 303
    assert review_count() == before + 1


def test_signing_out_ends_the_session_for_a_copy_of_the_cookie_too(trained):
    ui = signed_in(trained.base, trained.key)
    copied = ui.cookies["candor_session"]
    thief = httpx.Client(base_url=trained.base, cookies={"candor_session": copied}, follow_redirects=False)
    assert thief.get("/ui/datasets").status_code == 200
    r = ui.post("/ui/logout", data={"csrf": csrf_of(ui.get("/ui/datasets").text)})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    r = thief.get("/ui/datasets")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    # another sign-in of the same key is untouched
    other = signed_in(trained.base, trained.key)
    assert other.get("/ui/datasets").status_code == 200


def test_api_processes_without_a_configured_secret_accept_each_others_cookies(trained, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CANDOR_UI_SECRET"} | {"CANDOR_EMBEDDED": "0"}
    proc, second = serve(env, tmp_path / "serve.log")
    try:
        ui = signed_in(trained.base, trained.key)
        cookie = {"candor_session": ui.cookies["candor_session"]}
        r = httpx.get(f"{second}/ui/datasets", cookies=cookie, follow_redirects=False, timeout=30)
        assert r.status_code == 200, r.text
        # and a form served by one process is accepted by the other
        there = httpx.Client(base_url=second, timeout=30)
        page = there.get("/ui/login")
        r = httpx.post(
            f"{trained.base}/ui/login",
            data={"key": trained.key, "csrf": csrf_of(page.text)},
            cookies={"candor_signin": there.cookies["candor_signin"]},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
    finally:
        stop(proc)


def test_the_benefit_weighs_the_chance_of_a_wrong_label_by_the_pairs_confusion_and_adds_suspect_mass():
    from app.ml.review import ReviewRow, pair_confusion, ranks, review_order

    def row(label, other, p, suspect=False, outside=0.0):
        return ReviewRow(label, p, {label: p, other: round(1 - p, 6)}, round(2 * p - 1, 6), outside, suspect)

    rows = [
        row("coat", "shirt", 0.6),  # 0: a pair that confuses often
        row("coat", "shirt", 0.7),  # 1
        row("coat", "shirt", 0.65),  # 2
        row("bag", "sandal", 0.6),  # 3: as unsure as 0, on a pair seen once
        row("bag", "sandal", 0.95, suspect=True, outside=0.9),  # 4: a suspect set
        ReviewRow("boot", 1.0, {"boot": 1.0}, 1.0, 0.0, False),  # 5: nothing to resolve
    ]
    confusion = pair_confusion(rows)
    assert confusion[frozenset(("coat", "shirt"))] == 1.0
    assert 0 < confusion[frozenset(("bag", "sandal"))] < 1
    order = review_order(rows)
    ranked = [i for i, _ in order]
    assert ranked.index(4) == 0  # outside mass 0.9 outweighs any doubt inside a set
    assert ranked.index(0) < ranked.index(3)  # same confidence, the more confused pair first
    assert ranked[-1] == 5 and order[-1][1] == 0.0
    assert [ranks(rows)[i] for i in ranked] == [(n + 1, score) for n, (_, score) in enumerate(order)]
