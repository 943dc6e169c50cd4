"""Annotators' votes as input, on a real PostgreSQL: the candidate policy, the JSON and ZIP paths,
the 422s, idempotent re-sends, and the votes in the items and the labels."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.helpers import b64png, png_bytes

CLASSES = ["coat", "shirt", "dress"]
PROBLEM = "application/problem+json"


def new_dataset(client, auth, policy=None):
    body = {"name": "clothes", "classes": CLASSES} | ({"candidate_policy": policy} if policy is not None else {})
    r = client.post("/v1/datasets", json=body, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


def votes(*pairs, truth=None):
    return [{"annotator": a, "label": lab} | ({"ground_truth": True} if a == truth else {}) for a, lab in pairs]


def post_items(client, auth, ds_id, items):
    return client.post(f"/v1/datasets/{ds_id}/items", json={"items": items}, headers=auth)


def items_of(client, auth, ds_id):
    r = client.get(f"/v1/datasets/{ds_id}/items", headers=auth)
    assert r.status_code == 200, r.text
    return {it["id"]: it for it in r.json()["items"]}


def problem(r, status=422):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return r.json()


def test_default_policy_is_the_union_and_the_dataset_shows_it(client, auth):
    ds = new_dataset(client, auth)
    assert ds["candidate_policy"] == {"min_votes": 1, "ground_truth_wins": True}
    anns = votes(("a1", "coat"), ("a2", "shirt"), ("a3", "coat"))
    r = post_items(client, auth, ds["id"], [{"id": "x", "image_base64": b64png(1), "annotations": anns}])
    assert r.status_code == 201, r.text
    item = items_of(client, auth, ds["id"])["x"]
    assert item["candidates"] == ["coat", "shirt"]
    assert [(a["annotator"], a["label"], a["ground_truth"]) for a in item["annotations"]] == [
        ("a1", "coat", False),
        ("a2", "shirt", False),
        ("a3", "coat", False),
    ]
    detail = client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()
    assert detail["candidate_policy"] == {"min_votes": 1, "ground_truth_wins": True}
    assert detail["class_histogram"] == {"coat": 1, "shirt": 1, "dress": 0}


def test_min_votes_keeps_only_labels_with_enough_votes(client, auth):
    ds = new_dataset(client, auth, {"min_votes": 2})
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).json()["candidate_policy"]["min_votes"] == 2
    items = [
        {"id": "a", "image_base64": b64png(1), "annotations": votes(("a1", "coat"), ("a2", "shirt"), ("a3", "coat"))},
        {
            "id": "b",
            "image_base64": b64png(2),
            "annotations": votes(("a1", "dress"), ("a2", "shirt"), ("a3", "dress"), ("a4", "shirt")),
        },
    ]
    assert post_items(client, auth, ds["id"], items).status_code == 201
    got = items_of(client, auth, ds["id"])
    assert got["a"]["candidates"] == ["coat"]
    assert got["b"]["candidates"] == ["dress", "shirt"]


def test_min_votes_that_leaves_an_empty_set_is_a_422_naming_the_item(client, auth):
    ds = new_dataset(client, auth, {"min_votes": 2})
    items = [
        {"id": "ok", "image_base64": b64png(1), "annotations": votes(("a1", "coat"), ("a2", "coat"))},
        {"id": "split", "image_base64": b64png(2), "annotations": votes(("a1", "coat"), ("a2", "shirt"))},
    ]
    body = problem(post_items(client, auth, ds["id"], items))
    assert "(id 'split')" in body["detail"] and "candidate set would be empty" in body["detail"]
    assert [o["status"] for o in body["items"]] == ["created", "rejected"]
    assert items_of(client, auth, ds["id"]) == {}  # all or nothing


def test_ground_truth_wins_unless_the_policy_says_otherwise(client, auth):
    anns = votes(("a1", "coat"), ("a2", "coat"), ("rev", "dress"), truth="rev")
    wins = new_dataset(client, auth)
    assert post_items(
        client, auth, wins["id"], [{"id": "x", "image_base64": b64png(1), "annotations": anns}]
    ).is_success
    item = items_of(client, auth, wins["id"])["x"]
    assert item["candidates"] == ["dress"]
    assert [a["ground_truth"] for a in item["annotations"]] == [False, False, True]

    votes_only = new_dataset(client, auth, {"ground_truth_wins": False})
    r = post_items(client, auth, votes_only["id"], [{"id": "x", "image_base64": b64png(1), "annotations": anns}])
    assert r.status_code == 201
    assert items_of(client, auth, votes_only["id"])["x"]["candidates"] == ["coat", "dress"]


def test_explicit_candidates_win_and_the_votes_are_kept(client, auth):
    ds = new_dataset(client, auth)
    item = {
        "id": "x",
        "image_base64": b64png(1),
        "candidates": ["shirt", "dress"],
        "annotations": votes(("a1", "coat")),
    }
    assert post_items(client, auth, ds["id"], [item]).status_code == 201
    got = items_of(client, auth, ds["id"])["x"]
    assert got["candidates"] == ["shirt", "dress"]
    assert [a["label"] for a in got["annotations"]] == ["coat"]


def test_items_without_annotations_return_an_empty_list(client, auth):
    ds = new_dataset(client, auth)
    assert post_items(
        client, auth, ds["id"], [{"id": "x", "image_base64": b64png(1), "candidates": ["coat"]}]
    ).is_success
    assert items_of(client, auth, ds["id"])["x"]["annotations"] == []


def test_unknown_label_is_a_422_naming_the_item_and_the_annotator(client, auth):
    ds = new_dataset(client, auth)
    items = [{"id": "x", "image_base64": b64png(1), "annotations": votes(("a1", "coat"), ("bob", "hat"))}]
    body = problem(post_items(client, auth, ds["id"], items))
    assert "(id 'x')" in body["detail"] and "annotator 'bob'" in body["detail"] and "'hat'" in body["detail"]
    assert items_of(client, auth, ds["id"]) == {}


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ([], "'annotations' is empty"),
        ([{"annotator": "a1", "label": "coat"}, {"annotator": "a1", "label": "shirt"}], "appears more than once"),
    ],
)
def test_bad_annotation_lists_are_422s_naming_the_item(client, auth, annotations, expected):
    ds = new_dataset(client, auth)
    body = problem(
        post_items(client, auth, ds["id"], [{"id": "x", "image_base64": b64png(1), "annotations": annotations}])
    )
    assert "(id 'x')" in body["detail"] and expected in body["detail"]


@pytest.mark.parametrize(
    "annotation",
    [
        {"annotator": "", "label": "coat"},
        {"annotator": "a\u0000b", "label": "coat"},
        {"annotator": "a" * 256, "label": "coat"},
        {"annotator": "a1", "label": "coat", "votes": 3},
        {"annotator": "a1"},
    ],
)
def test_malformed_annotations_in_json_are_422s_without_reprs(client, auth, annotation):
    ds = new_dataset(client, auth)
    r = post_items(client, auth, ds["id"], [{"id": "x", "image_base64": b64png(1), "annotations": [annotation]}])
    body = problem(r)
    assert "annotations" in json.dumps(body) and " at 0x" not in r.text and "b'" not in r.text


def test_too_many_annotations_is_a_422(client, auth):
    ds = new_dataset(client, auth)
    many = [{"annotator": f"a{k}", "label": "coat"} for k in range(1001)]
    body = problem(post_items(client, auth, ds["id"], [{"id": "x", "image_base64": b64png(1), "annotations": many}]))
    assert "annotations" in json.dumps(body)
    assert client.get(f"/v1/datasets/{ds['id']}/items", headers=auth).json()["items"] == []  # nothing stored


def test_an_item_with_neither_candidates_nor_annotations_is_a_422(client, auth):
    ds = new_dataset(client, auth)
    body = problem(post_items(client, auth, ds["id"], [{"id": "x", "image_base64": b64png(1)}]))
    assert "(id 'x')" in body["detail"] and "'candidates' or 'annotations'" in body["detail"]


def test_bad_policies_are_422s(client, auth):
    for policy in ({"min_votes": 0}, {"min_votes": "two"}, {"quorum": 2}):
        r = client.post(
            "/v1/datasets", json={"name": "d", "classes": CLASSES, "candidate_policy": policy}, headers=auth
        )
        assert "candidate_policy" in json.dumps(problem(r))


def test_same_annotations_are_unchanged_and_different_ones_a_422(client, auth):
    ds = new_dataset(client, auth)
    item = {"id": "x", "image_base64": b64png(1), "annotations": votes(("a1", "coat"), ("a2", "shirt"))}
    assert post_items(client, auth, ds["id"], [item]).status_code == 201
    again = post_items(client, auth, ds["id"], [item])
    assert again.status_code == 200 and again.json()["items"][0]["status"] == "unchanged"
    # same derived set, other voters: still another item
    changed = item | {"annotations": votes(("a1", "coat"), ("a9", "shirt"))}
    body = problem(post_items(client, auth, ds["id"], [changed]))
    assert "(id 'x')" in body["detail"] and "with other annotations" in body["detail"]
    # votes added to an item first sent with candidates only
    plain = {"id": "y", "image_base64": b64png(2), "candidates": ["coat"]}
    assert post_items(client, auth, ds["id"], [plain]).status_code == 201
    problem(post_items(client, auth, ds["id"], [plain | {"annotations": votes(("a1", "coat"))}]))


def zip_with(lines: list[dict], images: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
        for name, data in images.items():
            zf.writestr(name, data)
    return buf.getvalue()


def import_zip(client, auth, ds_id, data):
    headers = auth | {"Content-Type": "application/zip"}
    return client.post(f"/v1/datasets/{ds_id}/imports", content=data, headers=headers)


def test_zip_manifest_lines_carry_annotations(client, auth):
    ds = new_dataset(client, auth, {"min_votes": 2})
    lines = [
        {"id": "a", "image": "a.png", "annotations": votes(("a1", "coat"), ("a2", "coat"), ("a3", "shirt"))},
        {"id": "b", "image": "b.png", "annotations": votes(("a1", "dress"), ("r", "shirt"), truth="r")},
    ]
    data = zip_with(lines, {"a.png": png_bytes(1), "b.png": png_bytes(2)})
    r = import_zip(client, auth, ds["id"], data)
    assert r.status_code == 201, r.text
    got = items_of(client, auth, ds["id"])
    assert got["a"]["candidates"] == ["coat"] and len(got["a"]["annotations"]) == 3
    assert got["b"]["candidates"] == ["shirt"]
    again = import_zip(client, auth, ds["id"], data)
    assert again.status_code == 200 and [o["status"] for o in again.json()["items"]] == ["unchanged", "unchanged"]


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ([{"annotator": "a1", "label": "hat"}], "annotator 'a1': label 'hat' is not among the classes"),
        ({"a1": "coat"}, "'annotations' must be a list"),
        (["coat"], "annotation 0 is"),
        ([{"annotator": 7, "label": "coat"}], "'annotator' must be a non-empty string"),
        ([{"annotator": "a1", "label": "coat", "ground_truth": "yes"}], "'ground_truth' must be true or false"),
        ([{"annotator": "a1", "label": "coat", "score": 1}], "unknown field 'score'"),
    ],
)
def test_zip_manifest_annotation_errors_name_the_item(client, auth, annotations, expected):
    ds = new_dataset(client, auth)
    lines = [
        {"id": "ok", "image": "a.png", "candidates": ["coat"]},
        {"id": "bad", "image": "b.png", "annotations": annotations},
    ]
    r = import_zip(client, auth, ds["id"], zip_with(lines, {"a.png": png_bytes(1), "b.png": png_bytes(2)}))
    body = problem(r)
    assert "item 1 (id 'bad')" in body["detail"] and expected in body["detail"], body["detail"]
    assert " at 0x" not in r.text and "{'" not in r.text
    assert items_of(client, auth, ds["id"]) == {}


# ---- labels: a stored job result read back through the labels route (committed data) -------------
@pytest.fixture
def api(database):
    from app.core import registry
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c
    registry.classifiers.clear()
    with database.begin() as conn:
        conn.execute(
            text("TRUNCATE job_results, jobs, items, images, datasets, idempotency_keys, api_keys, tenants CASCADE")
        )


def test_labels_carry_the_annotations_and_who_agreed(api):
    from app.core.db import session_scope
    from app.core.security import create_key
    from app.datasets.models import Dataset
    from app.jobs.models import Job, JobResult

    with session_scope() as s:
        _, k = create_key(s, f"tenant-{uuid.uuid4().hex[:6]}")
    key = {"Authorization": f"Bearer {k}"}
    ds = new_dataset(api, key)
    items = [
        {"id": "x", "image_base64": b64png(1), "annotations": votes(("a1", "coat"), ("a2", "shirt"), ("a3", "coat"))},
        {"id": "y", "image_base64": b64png(2), "candidates": ["dress", "shirt"]},
    ]
    assert post_items(api, key, ds["id"], items).status_code == 201
    with session_scope() as s:
        seqs = dict(s.execute(text("SELECT external_id, seq FROM items ORDER BY seq")).all())
        tenant_id = s.get(Dataset, uuid.UUID(ds["id"])).tenant_id
        job = Job(tenant_id=tenant_id, dataset_id=uuid.UUID(ds["id"]), state="succeeded", config={}, config_hash="h")
        s.add(job)
        s.flush()
        for ext, label, post in (
            ("x", "coat", {"coat": 0.8, "shirt": 0.2}),
            ("y", "dress", {"dress": 0.6, "shirt": 0.4}),
        ):
            s.add(
                JobResult(
                    job_id=job.id,
                    item_seq=seqs[ext],
                    external_id=ext,
                    label=label,
                    confidence=max(post.values()),
                    posterior=post,
                    margin=0.5,
                    outside_mass=0.1,
                    ambiguous=False,
                    candidates_suspect=False,
                    prior_label=label,
                )
            )
        job_id = job.id
    r = api.get(f"/v1/jobs/{job_id}/labels", headers=key)
    assert r.status_code == 200, r.text
    rows = {row["id"]: row for row in map(json.loads, r.text.splitlines())}
    assert rows["x"]["agreed"] == ["a1", "a3"]
    assert [(a["annotator"], a["label"]) for a in rows["x"]["annotations"]] == [
        ("a1", "coat"),
        ("a2", "shirt"),
        ("a3", "coat"),
    ]
    assert rows["y"]["annotations"] == [] and rows["y"]["agreed"] == []

    table = list(csv.DictReader(io.StringIO(api.get(f"/v1/jobs/{job_id}/labels?format=csv", headers=key).text)))
    by_id = {row["id"]: row for row in table}
    assert json.loads(by_id["x"]["annotations"]) == {"a1": "coat", "a2": "shirt", "a3": "coat"}
    assert json.loads(by_id["x"]["agreed"]) == ["a1", "a3"]
    assert json.loads(by_id["y"]["annotations"]) == {} and json.loads(by_id["x"]["posterior"])["coat"] == 0.8

    review = api.get(f"/v1/jobs/{job_id}/labels?order=review", headers=key).text.splitlines()
    assert {json.loads(x)["id"]: json.loads(x)["agreed"] for x in review} == {"x": ["a1", "a3"], "y": []}


# ---- candor clean manifests ---------------------------------------------------------------------
def write_manifest(root, lines):
    for k, line in enumerate(lines):
        (root / f"{line['id']}.png").write_bytes(png_bytes(k))
        line.setdefault("image", f"{line['id']}.png")
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_cli_manifests_derive_candidates_from_annotations(tmp_path):
    from app.cli import parser
    from app.ml.data import read_manifest
    from app.ml.votes import CandidatePolicy

    lines = [
        {"id": "a", "annotations": votes(("a1", "coat"), ("a2", "coat"), ("a3", "shirt"))},
        {"id": "b", "annotations": votes(("a1", "coat"), ("r", "dress"), truth="r")},
        {"id": "c", "candidates": ["shirt"], "annotations": votes(("a1", "coat"))},
    ]
    path = write_manifest(tmp_path, lines)
    assert read_manifest(path, CLASSES).candidates == [["coat", "shirt"], ["dress"], ["shirt"]]
    strict = CandidatePolicy(min_votes=2, ground_truth_wins=False)
    with pytest.raises(ValueError, match=r"manifest line 2 \(id 'b'\): no label has the 2 votes"):
        read_manifest(path, CLASSES, strict)
    args = parser().parse_args(
        ["clean", str(path), "--classes", "c.txt", "--out", "o", "--min-votes", "2", "--votes-over-ground-truth"]
    )
    assert (args.min_votes, args.votes_over_ground_truth) == (2, True)
    with pytest.raises(SystemExit):
        parser().parse_args(["clean", str(path), "--classes", "c.txt", "--out", "o", "--min-votes", "0"])


def test_cli_manifest_unknown_label_names_the_line_and_the_annotator(tmp_path):
    from app.ml.data import InputError, read_manifest

    path = write_manifest(tmp_path, [{"id": "a", "annotations": votes(("a1", "coat"), ("bob", "hat"))}])
    with pytest.raises(InputError, match=r"manifest line 1 \(id 'a'\): annotator 'bob': label 'hat'"):
        read_manifest(path, CLASSES)
