"""The published contract, /openapi.json of the running app: what a client generator needs from it,
and a client generated from it with `openapi-python-client` without a single warning, called
against the app on the test database."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import uuid
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import png_bytes

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
GENERATOR_CONFIG = ROOT / "docs" / "openapi-python-client.yaml"
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture
def spec(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    return answer.json()


def operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def test_operation_ids_are_the_route_names_and_unique(spec):
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    assert all(i.isidentifier() and i.islower() for i in ids), ids
    assert {
        "create_dataset", "list_datasets", "get_dataset", "delete_dataset", "add_items", "import_zip", "list_items",
        "start_job", "list_jobs", "get_job", "cancel_job", "get_labels",
        "list_classifiers", "get_classifier", "delete_classifier", "get_classifier_artifact", "predict",
    } <= set(ids)  # fmt: skip


def test_every_authenticated_operation_uses_the_bearer_scheme_and_declares_401(spec):
    assert spec["components"]["securitySchemes"]["bearer"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "cnd_...",
        "description": "",
    }
    for method, path, op in operations(spec):
        names = {p["name"].lower() for p in op.get("parameters", [])}
        assert "authorization" not in names, (method, path)
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearer": []}], (method, path)
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
        else:
            assert "security" not in op and "401" not in op["responses"]


def test_every_error_answer_is_a_problem_and_the_generic_ones_are_declared(spec):
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    problem = schemas["Problem"]
    assert {"type", "title", "status", "detail", "instance", "errors", "items"} <= set(problem["properties"])
    assert problem["required"] == ["title", "status"]
    for method, path, op in operations(spec):
        responses = op["responses"]
        errors = {int(c) for c in responses if int(c) >= 400}
        for code in errors:
            assert responses[str(code)]["content"] == PROBLEM, (method, path, code)
            assert responses[str(code)]["description"], (method, path, code)
        names = {p["name"] for p in op.get("parameters", [])}
        if op["operationId"] != "healthz":
            assert responses["503"]["headers"]["Retry-After"]["required"] is True, (method, path)
        if names or "requestBody" in op:
            assert 422 in errors, (method, path)
        if "cursor" in names:
            assert 400 in errors, (method, path)
        if "Idempotency-Key" in names:
            assert {400, 409, 422} <= errors, (method, path)
            for code in (c for c in responses if c.startswith("2")):
                assert "Idempotent-Replayed" in responses[code]["headers"], (method, path)
        if "requestBody" in op:
            assert {408, 413} <= errors, (method, path)
        if "{" in path:
            assert 404 in errors, (method, path)


def test_bodies_media_types_and_models_are_named_and_typed(spec):
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    labels = paths["/v1/jobs/{job_id}/labels"]["get"]["responses"]["200"]["content"]
    assert set(labels) == {"application/x-ndjson", "text/csv", "application/json", "application/zip"}
    assert labels["application/x-ndjson"] == {"schema": ref("LabelRow")}
    assert labels["application/zip"] == {"schema": {"type": "string", "format": "binary"}}  # pred_probs_npz
    assert labels["text/csv"] == {"schema": {"type": "string"}}
    json_formats = [s["title"] for s in labels["application/json"]["schema"]["anyOf"]]
    assert json_formats == ["LabelStudioPredictions", "ArgillaRecords", "FiftyOneLabels", "PredProbs"]
    assert {
        "id",
        "label",
        "confidence",
        "posterior",
        "margin",
        "ambiguous",
        "candidates_suspect",
        "label_quality",
    } <= set(schemas["LabelRow"]["properties"])
    imports = paths["/v1/datasets/{dataset_id}/imports"]["post"]["requestBody"]
    assert imports["required"] is True and set(imports["content"]) == {"application/zip", "application/octet-stream"}
    predict = paths["/v1/classifiers/{classifier_id}/predict"]["post"]
    assert predict["requestBody"]["content"] == {
        "application/json": {"schema": ref("PredictRequest")},
        "multipart/form-data": {"schema": ref("PredictForm")},
    }
    for body in ("PredictRequest", "PredictForm"):
        candidates = schemas[body]["properties"]["candidates"]["anyOf"][0]
        assert candidates == {"type": "array", "items": {"type": "string"}}, body
    legacy = next(p for p in predict["parameters"] if p["name"] == "candidates")
    assert legacy["deprecated"] is True
    artifact = paths["/v1/classifiers/{classifier_id}/artifact"]["get"]["responses"]["200"]["content"]
    assert artifact == {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    assert schemas["ItemIn"]["properties"]["image_base64"]["contentEncoding"] == "base64"
    assert schemas["PredictRequest"]["properties"]["images"]["items"]["contentEncoding"] == "base64"

    job = schemas["JobOut"]["properties"]
    assert job["config"]["$ref"] == "#/components/schemas/CleanConfig"
    assert job["metrics"]["anyOf"][0] == ref("JobMetrics")
    assert schemas["ClassifierOut"]["properties"]["metrics"] == ref("ClassifierMetrics")
    states = ["queued", "featurizing", "training", "succeeded", "failed", "cancelling", "cancelled"]
    assert schemas["JobProgress"]["properties"]["stage"]["anyOf"][0]["enum"] == states
    assert job["state"]["enum"] == states
    health = paths["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    ready = paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert (health, ready) == (ref("Health"), ref("Ready"))
    for path, status in (("/v1/datasets", "201"), ("/v1/jobs", "202"), ("/v1/webhooks", "201")):
        assert paths[path]["post"]["responses"][status]["headers"]["Location"]["required"] is True
    for _, path, op in operations(spec):
        if op["operationId"].startswith("list_"):
            page = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            assert page.endswith("Page") and set(schemas[page]["required"]) == {"items", "next_cursor"}, path


def test_every_timestamp_is_a_date_time(spec):
    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_at") and isinstance(value, dict) and where.endswith("properties"):
                    kinds = value.get("anyOf", [value])
                    assert any(k.get("format") == "date-time" for k in kinds), (where, key)
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    walk(spec["components"]["schemas"], "schemas")


# ---- a generated client ----------------------------------------------------------------------------
def generate(spec_text: str, where: Path, package: str) -> Path:
    """Run openapi-python-client on ``spec_text``; fail on any warning or error it prints."""
    source = where / "openapi.json"
    source.write_text(spec_text)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = ["generate", "--path", str(source), "--output-path", str(where / package), "--meta", "none"]
    run = subprocess.run(
        [str(GENERATOR), *args, "--config", str(GENERATOR_CONFIG)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=where,
        env=env,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    noise = [line for line in output.splitlines() if line.strip() and line.strip() != f"Generating {where / package}"]
    assert noise == [], output
    return where / package


def test_a_generated_client_has_no_warning_and_works_against_the_app(client, auth, other_auth, tmp_path):
    package = f"candor_generated_{uuid.uuid4().hex[:8]}"
    generate(client.get("/openapi.json").text, tmp_path, package)
    sys.path.insert(0, str(tmp_path))
    try:
        gen = importlib.import_module(package)
        ops = {
            op: importlib.import_module(f"{package}.api.{tag}.{op}")
            for tag, names in {
                "datasets": ("create_dataset", "get_dataset", "list_datasets", "import_zip"),
                "jobs": ("start_job", "get_job", "get_labels", "list_jobs"),
            }.items()
            for op in names
        }
        models = importlib.import_module(f"{package}.models")
        types = importlib.import_module(f"{package}.types")
    finally:
        sys.path.remove(str(tmp_path))

    def as_client(headers):
        c = gen.Client(base_url="http://testserver")
        client.headers.clear()
        client.headers.update(headers)
        return c.set_httpx_client(client)

    c = as_client(auth)
    made = ops["create_dataset"].sync(client=c, body=models.DatasetCreate(name="gen", classes=["cat", "dog", "bird"]))
    assert isinstance(made, models.DatasetOut) and made.classes == ["cat", "dog", "bird"]
    got = ops["get_dataset"].sync(made.id, client=c)
    assert isinstance(got, models.DatasetDetail) and got.created_at == made.created_at
    assert isinstance(got.created_at, datetime) and got.created_at.utcoffset().total_seconds() == 0

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.jsonl", '{"id": "a", "image": "a.png", "candidates": ["cat", "dog"]}\n')
        zf.writestr("a.png", png_bytes(1))
    imported = ops["import_zip"].sync_detailed(made.id, client=c, body=types.File(payload=buf.getvalue()))
    assert imported.status_code == 201 and imported.parsed.created == 1

    job = ops["start_job"].sync(client=c, body=models.JobCreate(dataset_id=made.id))
    assert isinstance(job, models.JobOut) and job.state == models.JobOutState.QUEUED
    assert isinstance(job.config, models.CleanConfig) and job.config.backbone == "offline"
    not_yet = ops["get_labels"].sync(job.id, client=c)
    assert isinstance(not_yet, models.Problem) and not_yet.status == 409

    too_many = ops["list_jobs"].sync(client=c, limit=5000)  # once a crash of the generated parser
    assert isinstance(too_many, models.Problem) and too_many.status == 422 and too_many.errors[0].loc[-1] == "limit"
    page = ops["list_datasets"].sync(client=c, limit=1)
    assert isinstance(page, models.DatasetPage) and [d.id for d in page.items] == [made.id]

    stranger = ops["get_job"].sync(job.id, client=as_client(other_auth))
    assert isinstance(stranger, models.Problem) and stranger.status == 404
    wrong = ops["get_job"].sync_detailed(job.id, client=as_client({"Authorization": "Bearer cnd_wrong"}))
    assert wrong.status_code == 401 and wrong.parsed.status == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
