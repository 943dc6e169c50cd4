"""Label exports on a real PostgreSQL: a finished job's stored results read back through
`GET /v1/jobs/{id}/labels?format=...` in Label Studio's, Argilla's, FiftyOne's and cleanlab's shapes.

Each shape is checked here against its documented format: Label Studio's prediction import, Argilla
2.x records with suggestions, FiftyOne's FiftyOneImageClassificationDataset labels.json, cleanlab's
pred_probs (N x K in class order); tests/test_argilla.py, test_fiftyone.py and test_cleanlab.py
check them with the tools' own parsers."""

from __future__ import annotations

import json
import typing
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app import exports
from tests.helpers import b64png

CLASSES = ["coat", "shirt", "dress"]
# item id -> (label, posterior over the candidates, ambiguous, candidates_suspect, votes)
RESULTS = {
    "x": ("coat", {"coat": 0.8, "shirt": 0.2}, False, False, [("a1", "coat"), ("a2", "shirt"), ("a3", "coat")]),
    "y": ("dress", {"dress": 0.55, "shirt": 0.45}, True, False, []),
    "z": ("shirt", {"shirt": 1.0}, False, True, []),
}


@pytest.fixture
def api(database):
    from app.core import registry
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c
    registry.classifiers.clear()
    with database.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE job_results, classifiers, jobs, items, images, datasets, idempotency_keys, api_keys, "
                "tenants CASCADE"
            )
        )


def finished_job(api, *, with_classifier=True):
    """A dataset of three items and a succeeded job with their stored results (and a classifier)."""
    from app.classifiers.models import ClassifierRow
    from app.core.db import session_scope
    from app.core.security import create_key
    from app.datasets.models import Dataset
    from app.jobs.models import Job, JobResult

    with session_scope() as s:
        _, k = create_key(s, f"tenant-{uuid.uuid4().hex[:6]}")
    key = {"Authorization": f"Bearer {k}"}
    r = api.post("/v1/datasets", json={"name": "clothes", "classes": CLASSES}, headers=key)
    assert r.status_code == 201, r.text
    ds_id = uuid.UUID(r.json()["id"])
    items = []
    for n, (ext, (_, post, _, _, votes)) in enumerate(RESULTS.items()):
        item = {"id": ext, "image_base64": b64png(n + 1)}
        if votes:
            item["annotations"] = [{"annotator": a, "label": lab} for a, lab in votes]
        else:
            item["candidates"] = sorted(post)
        items.append(item)
    r = api.post(f"/v1/datasets/{ds_id}/items", json={"items": items}, headers=key)
    assert r.status_code == 201, r.text
    with session_scope() as s:
        seqs = dict(s.execute(text("SELECT external_id, seq FROM items ORDER BY seq")).all())
        tenant_id = s.get(Dataset, ds_id).tenant_id
        job = Job(tenant_id=tenant_id, dataset_id=ds_id, state="succeeded", config={}, config_hash="h")
        s.add(job)
        s.flush()
        for ext, (label, post, amb, sus, _) in RESULTS.items():
            ranked = sorted(post.values(), reverse=True)
            s.add(
                JobResult(
                    job_id=job.id,
                    item_seq=seqs[ext],
                    external_id=ext,
                    label=label,
                    confidence=post[label],
                    posterior=post,
                    margin=round(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0), 6),
                    outside_mass=0.3 if sus else 0.05,
                    ambiguous=amb,
                    candidates_suspect=sus,
                    prior_label=label,
                )
            )
        if with_classifier:
            s.add(
                ClassifierRow(
                    tenant_id=tenant_id,
                    job_id=job.id,
                    dataset_id=ds_id,
                    version="7",
                    backbone="test",
                    backbone_id="test",
                    classes=CLASSES,
                    metrics={},
                    artifact=b"",
                )
            )
        job_id = job.id
    return job_id, key


def labels(api, key, job_id, **params):
    r = api.get(f"/v1/jobs/{job_id}/labels", params=params, headers=key)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == f'attachment; filename="labels-{job_id}.json"'
    return r.json()


def test_labelstudio_predictions_have_the_prediction_import_shape(api):
    job_id, key = finished_job(api)
    preds = labels(api, key, job_id, format="labelstudio")
    assert [p["task"] for p in preds] == ["x", "y", "z"]
    x = preds[0]
    assert set(x) == {"task", "model_version", "score", "result", "meta"}
    assert x["model_version"] == "7" and x["score"] == 0.8
    assert x["result"] == [
        {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["coat"]}}
    ]
    assert x["meta"]["agreed"] == ["a1", "a3"] and x["meta"]["posterior"] == {"coat": 0.8, "shirt": 0.2}
    assert [(p["meta"]["ambiguous"], p["meta"]["candidates_suspect"]) for p in preds] == [
        (False, False),
        (True, False),
        (False, True),
    ]

    named = labels(api, key, job_id, format="labelstudio", from_name="label", to_name="photo", flag="ambiguous")
    assert [(p["task"], p["result"][0]["from_name"], p["result"][0]["to_name"]) for p in named] == [
        ("y", "label", "photo")
    ]
    assert named[0]["result"][0]["value"] == {"choices": ["dress"]}


def test_labelstudio_model_version_falls_back_to_candor_without_a_classifier(api):
    job_id, key = finished_job(api, with_classifier=False)
    assert {p["model_version"] for p in labels(api, key, job_id, format="labelstudio")} == {"candor"}


def test_argilla_records_carry_a_single_label_and_a_multi_label_suggestion(api):
    job_id, key = finished_job(api)
    records = labels(api, key, job_id, format="argilla")
    assert [r["id"] for r in records] == ["x", "y", "z"]
    y = records[1]
    assert y["metadata"] == {
        "ambiguous": True,
        "candidates_suspect": False,
        "margin": 0.1,
        "outside_mass": 0.05,
        "label_quality": 0.55,
    }
    assert y["suggestions"]["label"] == {"value": "dress", "score": 0.55, "agent": "candor-7", "type": "model"}
    # the posterior over the candidates, most probable first; value and score line up one to one
    assert y["suggestions"]["candidates"] == {
        "value": ["dress", "shirt"],
        "score": [0.55, 0.45],
        "agent": "candor-7",
        "type": "model",
    }


def test_fiftyone_labels_json_indexes_the_classes_and_carries_the_flags(api):
    job_id, key = finished_job(api)
    doc = labels(api, key, job_id, format="fiftyone")
    assert doc["classes"] == CLASSES
    assert set(doc["labels"]) == {"x", "y", "z"}
    # FiftyOneImageClassificationDataset: the label is an index into classes when classes are given
    assert {i: doc["classes"][v["label"]] for i, v in doc["labels"].items()} == {
        "x": "coat",
        "y": "dress",
        "z": "shirt",
    }
    assert doc["labels"]["z"] == {
        "label": 1,
        "confidence": 1.0,
        "attributes": {
            "ambiguous": False,
            "candidates_suspect": True,
            "margin": 1.0,
            "outside_mass": 0.3,
            "label_quality": 1.0,
        },
    }


def test_pred_probs_are_n_by_k_in_class_order_with_ids_and_label_quality(api):
    job_id, key = finished_job(api)
    doc = labels(api, key, job_id, format="pred_probs")
    assert doc["classes"] == CLASSES and doc["ids"] == ["x", "y", "z"]
    assert doc["pred_probs"] == [[0.8, 0.2, 0.0], [0.0, 0.45, 0.55], [0.0, 1.0, 0.0]]
    assert all(abs(sum(row) - 1) < 1e-9 for row in doc["pred_probs"])
    assert doc["label_quality"] == [0.8, 0.55, 1.0]
    assert doc["labels"] == [0, 2, 1] and doc["out_of_sample"] is False
    # the filters and the order apply to every column alike
    review = labels(api, key, job_id, format="pred_probs", order="review")
    assert review["ids"] == ["y", "z", "x"]
    assert review["pred_probs"][0] == [0.0, 0.45, 0.55] and review["label_quality"] == [0.55, 1.0, 0.8]


def test_every_format_stays_whole_when_the_rows_come_a_page_at_a_time(api, monkeypatch):
    import app.jobs.routes as routes

    job_id, key = finished_job(api)
    whole = {fmt: labels(api, key, job_id, format=fmt) for fmt in ("labelstudio", "argilla", "fiftyone", "pred_probs")}
    monkeypatch.setattr(routes, "LABEL_PAGE", 1)
    for fmt, expected in whole.items():
        assert labels(api, key, job_id, format=fmt) == expected, fmt


def test_jsonl_and_csv_still_come_from_the_same_rows(api):
    job_id, key = finished_job(api)
    r = api.get(f"/v1/jobs/{job_id}/labels", headers=key)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["id"] for line in r.text.splitlines()] == ["x", "y", "z"]
    r = api.get(f"/v1/jobs/{job_id}/labels?format=csv", headers=key)
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == (
        "id,label,confidence,margin,outside_mass,ambiguous,candidates_suspect,prior_label,posterior,annotations,agreed,"
        "label_quality,reviewed,reviewed_label,reviewed_none_of_these"
    )


def test_an_unknown_format_or_an_empty_name_is_a_422_without_reprs(api):
    job_id, key = finished_job(api)
    for params in ({"format": "parquet"}, {"format": "labelstudio", "from_name": ""}):
        r = api.get(f"/v1/jobs/{job_id}/labels", params=params, headers=key)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert " at 0x" not in r.text and "{'" not in r.text


def test_the_route_the_client_and_the_exporter_know_the_same_formats():
    import app.jobs.routes as routes
    from candor.formats import LABEL_FORMATS

    hints = typing.get_type_hints(routes.get_labels, include_extras=True)
    assert set(typing.get_args(typing.get_args(hints["format"])[0])) == set(LABEL_FORMATS) == set(exports.FORMATS)


def test_pred_probs_streams_a_piece_per_row_and_reads_the_rows_once_per_column():
    calls = []

    def rows():
        calls.append(1)
        return iter([{"id": "a", "label": "b", "posterior": {"b": 1.0}, "confidence": 1.0, "label_quality": 1.0}])

    meta = exports.ExportMeta(classes=("a", "b"))
    chunks = list(exports.export("pred_probs", rows, meta))
    assert len(calls) == 4 and len(chunks) > 4
    assert json.loads(b"".join(chunks)) == {
        "classes": ["a", "b"],
        "ids": ["a"],
        "labels": [1],
        "pred_probs": [[0.0, 1.0]],
        "label_quality": [1.0],
        "out_of_sample": False,
    }


def test_the_client_refuses_an_unknown_format_before_asking_the_service(tmp_path):
    from candor import Client

    with Client("http://127.0.0.1:9", api_key="k") as c, pytest.raises(ValueError, match="unknown labels format"):
        c.download_labels(uuid.uuid4(), tmp_path / "x.json", format="parquet")
    assert not (tmp_path / "x.json").exists()
