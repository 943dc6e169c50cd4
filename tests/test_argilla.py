"""Argilla 2.x in and out, through the API on a real PostgreSQL, checked with the argilla 2.8.0
SDK's own record, response and suggestion classes (no Argilla server: the SDK's file I/O needs none).

Out: `GET /labels?format=argilla` is what `Record.to_dict()` writes for records carrying Candor's
suggestions and reads back with `Record.from_dict`. In: a `records.json` the SDK writes
(`JsonIO.to_json`, what `dataset.records.to_json` and `Dataset.to_disk` use) with images as data URIs
or files in the ZIP becomes items whose submitted responses are annotations."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import argilla as rg
import pytest
from argilla._helpers._media import pil_to_data_uri
from argilla._models import FieldModel, QuestionModel
from argilla._models._settings._fields import ImageFieldSettings
from argilla._models._settings._questions import LabelQuestionSettings
from argilla.records._io import JsonIO

from tests.helpers import color_image, png_bytes
from tests.test_exports import CLASSES, RESULTS, api, finished_job, labels  # noqa: F401

USERS = {name: str(uuid.uuid5(uuid.NAMESPACE_DNS, name)) for name in ("ann", "bob", "cyd")}


def test_argilla_export_is_the_sdks_record_json_with_model_suggestions(api):  # noqa: F811
    job_id, key = finished_job(api)
    records = labels(api, key, job_id, format="argilla")
    assert [r["id"] for r in records] == list(RESULTS)
    for rec in records:
        label, post, amb, sus, _ = RESULTS[rec["id"]]
        parsed = rg.Record.from_dict(rec)  # the SDK's own reader
        single, multi = parsed.suggestions["label"], parsed.suggestions["candidates"]
        assert (single.value, single.score, single.agent, single.type) == (label, post[label], "candor-7", "model")
        ranked = sorted(post, key=lambda c: -post[c])
        assert multi.value == ranked and multi.score == [post[c] for c in ranked] and multi.type == "model"
        assert parsed.metadata["ambiguous"] is amb and parsed.metadata["candidates_suspect"] is sus
        assert parsed.metadata["label_quality"] == pytest.approx(post[label])
        # the same record built with the SDK serialises to what Candor wrote (to_dict leaves out `type`)
        built = rg.Record(
            id=rec["id"],
            fields={},
            metadata=rec["metadata"],
            suggestions=[
                rg.Suggestion("label", label, score=post[label], agent="candor-7", type="model"),
                rg.Suggestion("candidates", ranked, score=[post[c] for c in ranked], agent="candor-7", type="model"),
            ],
        ).to_dict()
        ours = {q: {k: v for k, v in s.items() if k != "type"} for q, s in rec["suggestions"].items()}
        assert built["suggestions"] == ours
        assert {k: built[k] for k in ("id", "fields", "metadata", "responses", "vectors")} == {
            k: rec[k] for k in ("id", "fields", "metadata", "responses", "vectors")
        }


def test_argilla_suggestions_answer_the_question_names_asked_for_and_bad_names_are_422(api):  # noqa: F811
    job_id, key = finished_job(api)
    records = labels(api, key, job_id, format="argilla", label_question="category", candidates_question="options")
    for rec in records:
        parsed = rg.Record.from_dict(rec)
        assert set(rec["suggestions"]) == {"category", "options"}
        label, post, *_ = RESULTS[rec["id"]]
        assert parsed.suggestions["category"].value == label
        assert parsed.suggestions["options"].value == sorted(post, key=lambda c: -post[c])
    url = f"/v1/jobs/{job_id}/labels"
    for params, needle in [
        ({"format": "argilla", "label_question": "Category"}, "label_question"),
        ({"format": "argilla", "candidates_question": "--"}, "candidates_question"),
        ({"format": "argilla", "label_question": "x", "candidates_question": "x"}, "both 'x'"),
    ]:
        r = api.get(url, params=params, headers=key)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert needle in json.dumps(r.json()), r.text


def sdk_export(tmp_path, with_settings: bool) -> bytes:
    """An Argilla export as the SDK writes it: records.json (+ .argilla/settings.json), zipped.
    ``Record.to_dict`` leaves the responses' status out; with settings, the responses are written
    with it (``Response.serialize()``, the API's shape) instead, so that discarded and draft ones
    can be skipped."""

    def response(user, value, status="submitted"):
        return rg.Response("label", value, user_id=uuid.UUID(USERS[user]), status=status)

    records = [
        rg.Record(
            id="r1",
            fields={"image": pil_to_data_uri(color_image(1))},
            responses=[response("ann", "coat"), response("bob", "shirt"), response("cyd", "dress", "discarded")],
        ),
        rg.Record(id="r2", fields={"image": "images/r2.png"}, responses=[response("ann", "dress")]),
        rg.Record(id="r3", fields={"image": "images/r3.png"}, responses=[response("bob", "coat", "draft")]),
    ]
    path = tmp_path / "records.json"
    JsonIO.to_json(records, path)
    if with_settings:
        dicts = json.loads(path.read_text())
        for d, rec in zip(dicts, records, strict=True):
            d["responses"] = {"label": [r.serialize() | {"user_id": str(r.user_id)} for r in rec.responses]}
        path.write_text(json.dumps(dicts))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(path, "export/records.json")
        zf.writestr("export/images/r2.png", png_bytes(2))
        zf.writestr("export/images/r3.png", png_bytes(3))
        if with_settings:
            settings = {
                "fields": [FieldModel(name="image", settings=ImageFieldSettings()).model_dump(mode="json")],
                "questions": [
                    QuestionModel(
                        name="label", settings=LabelQuestionSettings(options=[{"value": c} for c in CLASSES])
                    ).model_dump(mode="json")
                ],
            }
            zf.writestr("export/.argilla/settings.json", json.dumps(settings))
    return buf.getvalue()


@pytest.mark.parametrize("with_settings", [True, False])
def test_argilla_export_imports_with_submitted_responses_as_annotations(api, tmp_path, with_settings):  # noqa: F811
    _, key = finished_job(api)
    r = api.post("/v1/datasets", json={"name": "argilla", "classes": CLASSES}, headers=key)
    ds = r.json()["id"]
    body = sdk_export(tmp_path, with_settings)
    headers = key | {"Content-Type": "application/zip"}
    r = api.post(f"/v1/datasets/{ds}/imports?format=argilla", content=body, headers=headers)
    assert r.status_code == 201, r.text
    got = {it["id"]: it for it in api.get(f"/v1/datasets/{ds}/items", headers=key).json()["items"]}
    expected = [("ann", "coat"), ("bob", "shirt")]
    if with_settings:  # statuses known: r3 has only a draft response, cyd's is discarded
        assert r.json()["created"] == 2 and set(got) == {"r1", "r2"}
    else:  # the SDK's records.json carries no status: every response counts as submitted
        assert r.json()["created"] == 3 and got["r3"]["candidates"] == ["coat"]
        expected.append(("cyd", "dress"))
    assert got["r1"]["candidates"] == [lab for _, lab in expected]
    assert [(a["annotator"], a["label"]) for a in got["r1"]["annotations"]] == [(USERS[u], lab) for u, lab in expected]
    assert got["r2"]["candidates"] == ["dress"]
    assert api.post(f"/v1/datasets/{ds}/imports?format=argilla", content=body, headers=headers).status_code == 200


def _zip(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _records(*recs) -> str:
    return json.dumps(list(recs))


def _rec(rid, image, *responses):
    return {"id": rid, "fields": {"image": image}, "responses": {"label": list(responses)}}


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"x.png": png_bytes(1)}, "no records.json"),
        ({"records.json": "{"}, "'records.json' is not valid JSON"),
        ({"records.json": "{}"}, "records.json must be a JSON list"),
        (
            {"records.json": _records(_rec("r1", "img/missing.png", {"value": "coat", "user_id": "u"}))},
            "record 0 (id 'r1'): no image field",
        ),
        (
            {"records.json": _records(_rec("r1", "data:image/png;base64,@@", {"value": "coat", "user_id": "u"}))},
            "(id 'r1'): image field 'image' is not valid base64",
        ),
        (
            {
                "records.json": _records(_rec("r1", "a.png", {"value": "cow", "user_id": "u"})),
                "a.png": png_bytes(1),
            },
            "(id 'r1'): annotator 'u': label 'cow' is not among the classes",
        ),
        ({"records.json": _records(_rec("r1", "a.png", {"value": "coat"})), "a.png": png_bytes(1)}, "no user_id"),
    ],
)
def test_bad_argilla_exports_answer_422_naming_the_record(api, files, named):  # noqa: F811
    _, key = finished_job(api)
    ds = api.post("/v1/datasets", json={"name": "bad", "classes": CLASSES}, headers=key).json()["id"]
    headers = key | {"Content-Type": "application/zip"}
    r = api.post(f"/v1/datasets/{ds}/imports?format=argilla", content=_zip(files), headers=headers)
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"]
    assert api.get(f"/v1/datasets/{ds}/items", headers=key).json()["items"] == []


@pytest.mark.parametrize(
    "records",
    [
        "[1]",
        '[{"id": "a", "responses": [1, 2]}]',
        '[{"id": "a", "responses": {"label": [{"value": "coat", "user_id": "u"}]}, "fields": []}]',
        '[{"id": "a", "responses": {"label": {"value": "coat"}}}]',
        '[{"id": 7, "responses": {"label": [{"value": ["coat", 3], "user_id": "u"}]}, "fields": {"image": "a.png"}}]',
        '[{"id": "a", "responses": {"label": [{"value": "coat", "user_id": "u"}]}, "fields": {"image": 5}}]',
    ],
)
def test_odd_argilla_records_answer_422_never_500(api, records):  # noqa: F811
    _, key = finished_job(api)
    ds = api.post("/v1/datasets", json={"name": "odd", "classes": CLASSES}, headers=key).json()["id"]
    headers = key | {"Content-Type": "application/zip"}
    body = _zip({"records.json": records, "a.png": png_bytes(1), ".argilla/settings.json": '{"fields": 3}'})
    r = api.post(f"/v1/datasets/{ds}/imports?format=argilla", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] and "Traceback" not in r.text and "{'" not in r.text
