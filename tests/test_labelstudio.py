"""Label Studio: its JSON export imported through the API, the predictions exported back (checked
with label-studio-sdk's own validator) and Candor as a Label Studio ML backend, on a real
`candor serve` with a real worker, PostgreSQL and Redis, task images served over HTTP.

label-studio-sdk pins numpy below the product's, so it lives in a virtual environment of its own
(build/labelstudio-sdk-venv, made on first use) and is driven by subprocess."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests import tool_envs
from tests.helpers import png_bytes
from tests.labelstudio_files import CLASSES, annotation, export_zip, label_config, task
from tests.sdk_service import JOB_CONFIG, celery_worker, new_key, serving  # noqa: F401
from tests.test_hostile_input import classifier  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SDK_PIN = "label-studio-sdk==2.1.2"
TOKEN = "ls-legacy-token-1234"


def ls_tasks(n: int = 12) -> tuple[list[dict], dict[str, bytes]]:
    """n tasks of project 4, ids 101..: three annotators who disagree, a cancelled annotation on
    each (left out), a ground truth on every fourth task; uploads and local files alike."""
    tasks, media = [], {}
    for k in range(n):
        tid = 101 + k
        first, second = CLASSES[k % 3], CLASSES[(k + 1) % 3]
        if k % 2:
            url, path = f"/data/upload/4/abc{k}-img{k}.png", f"data/upload/4/abc{k}-img{k}.png"
        else:
            url, path = f"/data/local-files/?d=photos%2Fimg{k}.png", f"photos/img{k}.png"
        media[path] = png_bytes(k)
        anns = [
            annotation(1000 + 4 * k, 1, first),
            annotation(1001 + 4 * k, {"id": 2, "email": "b@example.com"}, second),
            annotation(1002 + 4 * k, 3, first, ground_truth=k % 4 == 0),
            annotation(1003 + 4 * k, 5, CLASSES[(k + 2) % 3], cancelled=True),
        ]
        tasks.append(task(tid, url, anns))
    return tasks, media


# ---- a real service ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(database, tmp_path_factory):
    """`candor serve` on the test database, allowed to fetch task images from loopback, sealing the
    Label Studio tokens it stores under a key made for this run."""
    from cryptography.fernet import Fernet

    yield from serving(
        database,
        tmp_path_factory,
        CANDOR_LABELSTUDIO_ALLOW_PRIVATE="1",
        CANDOR_LABELSTUDIO_TOKEN_KEYS=Fernet.generate_key().decode(),
    )


def api(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def new_dataset(c: httpx.Client, classes=CLASSES) -> str:
    r = c.post("/v1/datasets", json={"name": f"ls-{uuid.uuid4().hex[:6]}", "classes": classes})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def import_ls(c: httpx.Client, ds: str, body: bytes) -> httpx.Response:
    return c.post(
        f"/v1/datasets/{ds}/imports",
        params={"format": "labelstudio"},
        content=body,
        headers={"Content-Type": "application/zip"},
    )


@pytest.fixture(scope="module")
def imported(service, celery_worker):  # noqa: F811
    """A Label Studio export imported into a dataset and cleaned by a finished job."""
    key = new_key()
    tasks, media = ls_tasks()
    with api(service, key) as c:
        ds = new_dataset(c)
        r = import_ls(c, ds, export_zip(tasks, media))
        assert r.status_code == 201, r.text
        r = c.post("/v1/jobs", json={"dataset_id": ds, "config": JOB_CONFIG})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        for _ in range(600):
            job = c.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            threading.Event().wait(0.5)
        assert job["state"] == "succeeded", job
    return {"key": key, "dataset": ds, "job": job, "tasks": tasks, "import": r}


# ---- the import ------------------------------------------------------------------------------------
def test_an_export_becomes_items_with_their_task_ids_votes_and_ground_truth(service, imported):
    tasks = imported["tasks"]
    with api(service, imported["key"]) as c:
        items = c.get(f"/v1/datasets/{imported['dataset']}/items", params={"limit": 1000}).json()["items"]
        assert [i["id"] for i in items] == [str(t["id"]) for t in tasks]
        for k, item in enumerate(items):
            first, second = CLASSES[k % 3], CLASSES[(k + 1) % 3]
            assert item["source"] == {
                "tool": "labelstudio",
                "task": 101 + k,
                "project": 4,
                "from_name": "garment",
                "to_name": "photo",
            }
            truth = k % 4 == 0
            assert item["annotations"] == [
                {"annotator": "1", "label": first, "ground_truth": False},
                {"annotator": "b@example.com", "label": second, "ground_truth": False},
                {"annotator": "3", "label": first, "ground_truth": truth},
            ]
            # the cancelled annotation (user 5, the third class) is not a vote; ground truth wins
            assert item["candidates"] == ([first] if truth else [first, second])
        # the same export again stores nothing twice
        again = import_ls(c, imported["dataset"], export_zip(*ls_tasks()))
        assert again.status_code == 200, again.text
        assert (again.json()["created"], again.json()["unchanged"]) == (0, len(tasks))


def test_tasks_without_a_live_annotation_are_skipped(service):
    tasks, media = ls_tasks(3)
    tasks[1]["annotations"] = [annotation(9, 1, "coat", cancelled=True)]
    tasks[2]["annotations"] = []
    with api(service, new_key()) as c:
        ds = new_dataset(c)
        r = import_ls(c, ds, export_zip(tasks, media))
        assert r.status_code == 201, r.text
        assert [o["id"] for o in r.json()["items"]] == ["101"]


def _problem(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()["detail"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t, m, cfg: (t, m, label_config(["coat", "shirt", "jumper"])), "choice 'jumper'"),
        (lambda t, m, cfg: (t, m, ""), "no label_config.xml"),
        (lambda t, m, cfg: (t, m, "<View><Image name='photo' value='$img'/></View>"), "no <Choices>"),
        (lambda t, m, cfg: (t, m, "<View><Choices"), "not well-formed"),
        (lambda t, m, cfg: (t, {}, cfg), "task 101: image '/data/local-files/?d=photos%2Fimg0.png' is not in the ZIP"),
        (
            lambda t, m, cfg: ([t[0] | {"annotations": [annotation(1, 7, "jumper")]}], m, cfg),
            "task 101: annotator '7' chose 'jumper', which is not one of the dataset's classes",
        ),
        (
            lambda t, m, cfg: ([t[0] | {"annotations": [annotation(1, 7, ["coat", "shirt"])]}], m, cfg),
            "task 101: annotator '7' picked 2 choices",
        ),
        (lambda t, m, cfg: ([t[0] | {"data": {"image": "x.png"}}], m, cfg), "task 101: its data has no 'img'"),
        (lambda t, m, cfg: ([t[0], t[0]], m, cfg), "task 101 appears twice"),
        (lambda t, m, cfg: ([{"data": {}}], m, cfg), "task 0 of the export has no integer 'id'"),
        (lambda t, m, cfg: ({"tasks": t}, m, cfg), "is not a list of tasks"),
    ],
)
def test_bad_exports_are_422s_naming_the_task_or_the_label_and_store_nothing(service, change, expected):
    tasks, media = ls_tasks(2)
    tasks, media, config = change(tasks, media, label_config())
    with api(service, new_key()) as c:
        ds = new_dataset(c)
        detail = _problem(import_ls(c, ds, export_zip(tasks, media, config)))
        assert expected in detail
        assert "Traceback" not in detail and "{'" not in detail
        assert c.get(f"/v1/datasets/{ds}").json()["item_count"] == 0


def test_a_remote_image_url_is_a_422_naming_the_task(service):
    tasks, media = ls_tasks(1)
    tasks[0]["data"]["img"] = "https://bucket.example.com/img0.png"
    with api(service, new_key()) as c:
        detail = _problem(import_ls(c, new_dataset(c), export_zip(tasks, media)))
        assert "task 101: image 'https://bucket.example.com/img0.png' is not in the ZIP (a remote URL)" in detail


# ---- the export, validated by label-studio-sdk -----------------------------------------------------
def sdk_python() -> Path:
    """A Python with label-studio-sdk: that of `make e2e-labelstudio`'s Label Studio when it is
    there, else build/labelstudio-sdk-venv, made on first use (tests/tool_envs.py)."""
    e2e = ROOT / "build" / "labelstudio-venv" / "bin" / "python"
    if e2e.exists() and subprocess.run([str(e2e), "-c", "import label_studio_sdk"], check=False).returncode == 0:
        return e2e
    return tool_envs.venv("labelstudio-sdk", SDK_PIN, "label_studio_sdk")


VALIDATE = """
import json, sys
from label_studio_sdk.label_interface import LabelInterface
config, predictions = json.load(sys.stdin)
li = LabelInterface(config)
out = []
for p in predictions:
    errors = li.validate_prediction(p, return_errors=True)
    out.append({"task": p["task"], "valid": errors == [], "errors": errors})
print(json.dumps(out))
"""


def sdk_validate(config: str, predictions: list[dict]) -> list[dict]:
    done = subprocess.run(
        [str(sdk_python()), "-c", VALIDATE],
        input=json.dumps([config, predictions]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_labelstudio_export_carries_the_task_ids_and_passes_the_sdk_validator(service, imported):
    job = imported["job"]
    with api(service, imported["key"]) as c:
        preds = c.get(f"/v1/jobs/{job['id']}/labels", params={"format": "labelstudio"}).json()
        rows = {json.loads(x)["id"]: json.loads(x) for x in c.get(f"/v1/jobs/{job['id']}/labels").text.splitlines()}
        version = c.get(f"/v1/classifiers/{job['classifier_id']}").json()["version"]
    assert [p["task"] for p in preds] == [t["id"] for t in imported["tasks"]]
    for p in preds:
        row = rows[str(p["task"])]
        assert p["model_version"] == version and p["score"] == row["confidence"]
        assert p["result"] == [
            {"from_name": "garment", "to_name": "photo", "type": "choices", "value": {"choices": [row["label"]]}}
        ]
        assert p["meta"]["ambiguous"] == row["ambiguous"] and p["meta"]["agreed"] == row["agreed"]
        assert row["source"]["task"] == p["task"]
    checked = sdk_validate(label_config(), preds)
    assert [c["task"] for c in checked] == [p["task"] for p in preds]
    assert all(c["valid"] for c in checked), checked
    # the validator does catch a prediction that does not fit the config
    bad = [preds[0] | {"result": [preds[0]["result"][0] | {"value": {"choices": ["jumper"]}}]}]
    found = sdk_validate(label_config(), bad)[0]
    assert found["valid"] is False and "jumper" in found["errors"][0]


# ---- the ML backend --------------------------------------------------------------------------------
class ImageServer:
    """A small HTTP server for task images: Label Studio's /data/upload/ (only with its token) and
    a public folder; it records the Authorization headers it was sent."""

    def __init__(self, images: dict[str, bytes]):
        self.images = images
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("Authorization")
                outer.seen.append((self.path, auth))
                data = outer.images.get(self.path)
                if self.path.startswith("/data/upload/") and auth != f"Token {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def images():
    server = ImageServer({"/data/upload/4/a.png": png_bytes(3), "/public/b.png": png_bytes(4)})
    yield server
    server.close()


def stored_tokens() -> list[str]:
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.labelstudio.models import LabelStudioConnection

    with session_scope() as s:
        return list(s.scalars(select(LabelStudioConnection.token).where(LabelStudioConnection.token.is_not(None))))


def basic(key: str, user: str = "labelstudio") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def test_the_ml_backend_sets_up_and_predicts_tasks_fetched_by_url(service, imported, images):
    clf = imported["job"]["classifier_id"]
    root = f"{service}/v1/labelstudio/{clf}"
    auth = basic(imported["key"])
    with httpx.Client(timeout=60) as c:
        health = c.get(f"{root}/health", headers=auth)
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "UP"
        version = health.json()["model_version"]
        assert c.get(f"{root}/metrics", headers=auth).json() == {}
        setup = {
            "project": "4.1764400000",
            "schema": label_config(),
            "extra_params": {"url": images.url, "token": TOKEN},
        }
        r = c.post(f"{root}/setup", json=setup, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json() == {"model_version": version}
        tasks = [
            {"id": 101, "data": {"img": "/data/upload/4/a.png"}},
            {"id": 102, "data": {"img": f"{images.url}/public/b.png"}},
            {"id": 103, "data": {"img": "data:image/png;base64," + base64.b64encode(png_bytes(5)).decode()}},
        ]
        body = {"tasks": tasks, "project": "4.1764400000", "label_config": label_config(), "params": {"context": {}}}
        r = c.post(f"{root}/predict", json=body, headers=auth)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        direct = c.post(
            f"{service}/v1/classifiers/{clf}/predict",
            json={"images": [base64.b64encode(png_bytes(k)).decode() for k in (3, 4, 5)], "candidates": CLASSES},
            headers={"Authorization": f"Bearer {imported['key']}"},
        ).json()["predictions"]
    assert len(results) == 3
    for res, want in zip(results, direct, strict=True):
        assert res["model_version"] == version
        assert res["result"] == [
            {"from_name": "garment", "to_name": "photo", "type": "choices", "value": {"choices": [want["label"]]}}
        ]
        assert res["score"] == pytest.approx(want["top"][0]["p"], abs=1e-6)
    # the token went to Label Studio's origin only, and is stored sealed
    assert ("/data/upload/4/a.png", f"Token {TOKEN}") in images.seen
    stored = stored_tokens()
    assert stored and all(t.startswith("fernet:") and TOKEN not in t for t in stored), stored
    assert ("/public/b.png", f"Token {TOKEN}") in images.seen  # same origin as the connection's URL
    checked = sdk_validate(label_config(), [r | {"task": t["id"]} for r, t in zip(results, tasks, strict=True)])
    assert all(c["valid"] for c in checked), checked


def test_the_ml_backend_refuses_missing_and_wrong_keys(service, imported):
    clf = imported["job"]["classifier_id"]
    root = f"{service}/v1/labelstudio/{clf}"
    with httpx.Client(timeout=30) as c:
        r = c.get(f"{root}/health")
        assert r.status_code == 401 and "basic-auth password" in r.json()["detail"]
        assert "Basic" in r.headers["www-authenticate"]
        r = c.post(f"{root}/predict", json={"tasks": []}, headers=basic("cnd_not-a-key"))
        assert r.status_code == 401 and r.json()["detail"] == "unknown or revoked API key"
        r = c.get(f"{root}/health", headers={"Authorization": "Basic !!!"})
        assert r.status_code == 401 and "not valid base64" in r.json()["detail"]
        # another tenant's key does not see the classifier
        r = c.get(f"{root}/health", headers=basic(new_key()))
        assert r.status_code == 404
        # the bearer form works as well
        r = c.get(f"{root}/health", headers={"Authorization": f"Bearer {imported['key']}"})
        assert r.status_code == 200


def test_the_ml_backend_names_the_task_whose_image_fails(service, imported, images):
    clf = imported["job"]["classifier_id"]
    root = f"{service}/v1/labelstudio/{clf}"
    auth = basic(imported["key"])
    cfg = label_config()
    with httpx.Client(timeout=30) as c:
        # no connection for project 9: a relative URL cannot be resolved
        body = {"tasks": [{"id": 7, "data": {"img": "/data/upload/4/a.png"}}], "project": "9.1", "label_config": cfg}
        detail = _problem(c.post(f"{root}/predict", json=body, headers=auth))
        assert detail.startswith("task 7: image '/data/upload/4/a.png': it is relative to Label Studio")
        # a wrong token: Label Studio answers 401
        setup = {"project": "9.1", "schema": cfg, "extra_params": {"url": images.url, "token": "wrong"}}
        assert c.post(f"{root}/setup", json=setup, headers=auth).status_code == 200
        detail = _problem(c.post(f"{root}/predict", json=body, headers=auth))
        assert "task 7" in detail and "HTTP 401 (check the connection's token)" in detail
        body["tasks"] = [{"id": 8, "data": {"img": f"{images.url}/missing.png"}}]
        assert "task 8" in _problem(c.post(f"{root}/predict", json=body, headers=auth))
        body["tasks"] = [{"id": 9, "data": {"other": "x"}}]
        assert "task 9: its data has no 'img'" in _problem(c.post(f"{root}/predict", json=body, headers=auth))
        # a config whose choices are not the classifier's classes
        bad = {"project": "9.1", "schema": label_config(["coat", "jumper"])}
        detail = _problem(c.post(f"{root}/setup", json=bad, headers=auth))
        assert "choice 'jumper'" in detail


def test_the_ml_backend_refuses_loopback_images_unless_allowed(client, auth, images):
    """The in-process app keeps the default: Label Studio URLs on loopback are refused."""
    r = client.post(
        f"/v1/labelstudio/{uuid.uuid4()}/setup",
        json={"project": "1.1", "schema": label_config(), "extra_params": {"url": images.url}},
        headers=auth,
    )
    # the classifier does not exist: 404 comes first, naming it
    assert r.status_code == 404
    from app.labelstudio.service import FetchError, ImageFetcher

    with pytest.raises(FetchError, match="a loopback address"):
        ImageFetcher(None)(f"{images.url}/public/b.png")
    with pytest.raises(FetchError, match="a cloud metadata address"):
        ImageFetcher(None)("http://169.254.169.254/latest/meta-data")


def test_an_annotation_webhook_starts_a_job_only_when_the_connection_trains(service, imported):
    clf = imported["job"]["classifier_id"]
    root = f"{service}/v1/labelstudio/{clf}"
    auth = basic(imported["key"])
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 4}, "annotation": {"id": 1}, "task": {"id": 101}}
    with httpx.Client(timeout=30) as c:
        r = c.post(f"{root}/webhook", json={"action": "PROJECT_UPDATED"}, headers=auth)
        assert r.status_code == 201 and r.json() == {"status": "Unknown event", "job_id": None, "item": None}
        r = c.post(f"{root}/setup", json={"project": "4.1", "schema": label_config()}, headers=auth)
        assert r.status_code == 200
        r = c.post(f"{root}/webhook", json=event, headers=auth)
        assert r.status_code == 201 and r.json() == {"status": "ok", "job_id": None, "item": None}
        setup = {"project": "4.1", "schema": label_config(), "extra_params": {"train": True}}
        assert c.post(f"{root}/setup", json=setup, headers=auth).status_code == 200
        r = c.post(f"{root}/webhook", json=event, headers=auth)
        assert r.status_code == 201 and r.json()["job_id"], r.text
        job = c.get(f"{service}/v1/jobs/{r.json()['job_id']}", headers={"Authorization": f"Bearer {imported['key']}"})
        assert job.json()["dataset_id"] == imported["dataset"]
        assert job.json()["config"]["backbone"] == "tiny"
        c.post(f"{service}/v1/jobs/{job.json()['id']}/cancel", headers={"Authorization": f"Bearer {imported['key']}"})


def test_an_annotation_event_enters_the_dataset_before_the_job_it_starts(service, imported, images):
    import hashlib

    clf = imported["job"]["classifier_id"]
    root = f"{service}/v1/labelstudio/{clf}"
    auth = basic(imported["key"])
    project = {"id": 4, "label_config": label_config()}
    started: list[str] = []
    with httpx.Client(timeout=60) as c, api(service, imported["key"]) as bearer:

        def items() -> dict[str, dict]:
            got = bearer.get(f"/v1/datasets/{imported['dataset']}/items", params={"limit": 1000})
            return {i["id"]: i for i in got.json()["items"]}

        def send(action: str, task: dict, ann: dict) -> dict:
            r = c.post(f"{root}/webhook", json={"action": action, "project": project, "task": task, "annotation": ann},
                       headers=auth)  # fmt: skip
            assert r.status_code == 201, r.text
            started.append(r.json()["job_id"])
            return r.json()

        setup = {
            "project": "4.1",
            "schema": label_config(),
            "extra_params": {"url": images.url, "token": TOKEN, "train": True},
        }
        assert c.post(f"{root}/setup", json=setup, headers=auth).status_code == 200
        before = items()["102"]
        task = {"id": 102, "data": imported["tasks"][1]["data"], "project": 4}
        # a new annotator's vote joins the item, and the candidate set follows the policy
        assert send("ANNOTATION_CREATED", task, annotation(5000, 7, "dress"))["item"] == "updated"
        after = items()["102"]
        assert after["annotations"] == before["annotations"] + [
            {"annotator": "7", "label": "dress", "ground_truth": False}
        ]
        assert "dress" in after["candidates"] and after["image_sha256"] == before["image_sha256"]
        # the annotator changes their mind: the vote is replaced, not added
        assert send("ANNOTATION_UPDATED", task, annotation(5000, 7, "coat"))["item"] == "updated"
        assert [a["label"] for a in items()["102"]["annotations"] if a["annotator"] == "7"] == ["coat"]
        assert send("ANNOTATION_UPDATED", task, annotation(5000, 7, "coat"))["item"] == "unchanged"
        # a cancelled annotation takes the vote away
        assert send("ANNOTATION_UPDATED", task, annotation(5000, 7, "coat", cancelled=True))["item"] == "updated"
        assert items()["102"]["annotations"] == before["annotations"]
        assert items()["102"]["candidates"] == before["candidates"]
        # a task the dataset does not hold becomes an item, its image fetched from Label Studio
        new = {"id": 990, "data": {"img": "/public/b.png"}, "project": 4}
        answer = send("ANNOTATION_CREATED", new, annotation(5001, 7, "shirt"))
        assert answer["item"] == "created" and answer["job_id"]
        item = items()["990"]
        assert item["image_sha256"] == hashlib.sha256(png_bytes(4)).hexdigest()
        assert item["annotations"] == [{"annotator": "7", "label": "shirt", "ground_truth": False}]
        assert item["candidates"] == ["shirt"]
        assert item["source"] == {"tool": "labelstudio", "task": 990, "from_name": "garment", "to_name": "photo",
                                  "project": 4}  # fmt: skip
        # a choice that is not a class: 422 naming the task, nothing stored
        r = c.post(
            f"{root}/webhook",
            json={"action": "ANNOTATION_CREATED", "project": {"id": 4}, "task": task,
                  "annotation": annotation(5002, 8, "jumper")},
            headers=auth,
        )  # fmt: skip
        assert r.status_code == 422 and "task 102" in r.json()["detail"] and "jumper" in r.json()["detail"]
        assert items()["102"]["annotations"] == before["annotations"]
        for job_id in {j for j in started if j}:
            bearer.post(f"/v1/jobs/{job_id}/cancel")


# ---- the CLI and client against Label Studio's API ------------------------------------------------
class LabelStudioAPI:
    """Label Studio's API as the CLI uses it (the routes and shapes of Label Studio 1.23): the
    project with its labeling config, the JSON export, the task media (with the token) and the
    prediction import, which it records. `make e2e-labelstudio` runs the real one."""

    def __init__(self, tasks: list[dict], media: dict[str, bytes], project: int = 4):
        self.pushed: list[list[dict]] = []
        outer = self
        files = {}
        for t in tasks:
            url = t["data"]["img"]
            path = url.split("?d=")[1].replace("%2F", "/") if "?d=" in url else url.removeprefix("/")
            files[url] = media[path]

        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Token {TOKEN}":
                    return True
                self._send(401, b'{"detail": "Authentication credentials were not provided."}')
                return False

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == f"/api/projects/{project}/":
                    self._send(200, json.dumps({"id": project, "label_config": label_config()}).encode())
                elif self.path == f"/api/projects/{project}/export?exportType=JSON":
                    self._send(200, json.dumps(tasks).encode())
                elif self.path in files:
                    self._send(200, files[self.path], "image/png")
                else:
                    self._send(404, b'{"detail": "Not found."}')

            def do_POST(self):
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == f"/api/projects/{project}/import/predictions":
                    outer.pushed.append(body)
                    self._send(201, json.dumps({"created": len(body)}).encode())
                else:
                    self._send(404, b'{"detail": "Not found."}')

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_cli_reads_a_project_from_label_studio_and_pushes_predictions_back(service, imported, capsys):
    from app.cli import main

    tasks, media = ls_tasks(6)
    ls = LabelStudioAPI(tasks, media)
    key = imported["key"]
    common = ["--server", service, "--key", key, "--ls-url", ls.url, "--ls-token", TOKEN, "--project", "4"]
    try:
        assert main(["remote", "labelstudio-import", *common, "--name", "from-ls"]) == 0
        out = capsys.readouterr()
        dataset = out.out.strip()
        assert "6 tasks into dataset" in out.err and "6 created" in out.err
        with api(service, key) as c:
            ds = c.get(f"/v1/datasets/{dataset}").json()
            assert ds["name"] == "from-ls" and ds["classes"] == CLASSES  # the config's choices
            items = c.get(f"/v1/datasets/{dataset}/items").json()["items"]
        assert [(i["id"], i["source"]["task"], len(i["annotations"])) for i in items] == [
            (str(t["id"]), t["id"], 3) for t in tasks
        ]
        # a wrong Label Studio token is one plain line
        bad = [a if a != TOKEN else "wrong" for a in common]
        assert main(["remote", "labelstudio-import", *bad]) == 1
        assert "Label Studio answered HTTP 401" in capsys.readouterr().err

        job = imported["job"]["id"]
        assert main(["remote", "labelstudio-push", job, *common]) == 0
        assert f"12 predictions of job {job} imported into Label Studio project 4" in capsys.readouterr().err
        assert [p["task"] for p in ls.pushed[0]] == [t["id"] for t in imported["tasks"]]
        assert {p["result"][0]["from_name"] for p in ls.pushed[0]} == {"garment"}
    finally:
        ls.close()


def test_the_hostname_and_token_label_studio_sends_by_itself_serve_when_no_extra_params_do(service, imported, images):
    clf = imported["job"]["classifier_id"]
    root = f"{service}/v1/labelstudio/{clf}"
    auth = basic(imported["key"])
    setup = {"project": "12.1", "schema": label_config(), "hostname": images.url, "access_token": TOKEN}
    body = {
        "tasks": [{"id": 5, "data": {"img": "/data/upload/4/a.png"}}],
        "project": "12.1",
        "label_config": label_config(),
    }
    with httpx.Client(timeout=60) as c:
        assert c.post(f"{root}/setup", json=setup, headers=auth).status_code == 200
        r = c.post(f"{root}/predict", json=body, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["result"][0]["value"]["choices"][0] in CLASSES
        # the stored token never follows the connection to another Label Studio: a new URL needs a new token
        moved = {"project": "12.1", "schema": label_config(), "extra_params": {"url": "http://127.0.0.1:9/"}}
        detail = _problem(c.post(f"{root}/setup", json=moved, headers=auth))
        assert detail == "project 12 is connected to another Label Studio; give its token with the new URL"
        assert c.post(f"{root}/predict", json=body, headers=auth).status_code == 200  # still the first one
        # a refused extra_params URL is a 422 naming it; link-local addresses are refused whatever the setting
        bad = setup | {"extra_params": {"url": "http://169.254.169.254/"}}
        detail = _problem(c.post(f"{root}/setup", json=bad, headers=auth))
        assert "Label Studio URL 'http://169.254.169.254/'" in detail and "cloud metadata" in detail
        # a refused hostname (sent by Label Studio itself) is ignored, not a failed connection
        quiet = setup | {"project": "13.1", "hostname": "http://169.254.169.254"}
        assert c.post(f"{root}/setup", json=quiet, headers=auth).status_code == 200
        body["project"] = "13.1"
        assert "it is relative to Label Studio" in _problem(c.post(f"{root}/predict", json=body, headers=auth))


def test_remote_image_urls_that_differ_in_their_query_get_their_own_zip_members():
    from candor.labelstudio import zip_path

    a, b = zip_path("https://cdn.example.com/img?id=1"), zip_path("https://cdn.example.com/img?id=2")
    assert a != b and a.startswith("remote/cdn.example.com/img-") and b.startswith("remote/cdn.example.com/img-")
    assert zip_path("https://cdn.example.com/a/b.png") == "remote/cdn.example.com/a/b.png"
    assert zip_path("/data/upload/3/x.png") == "data/upload/3/x.png"
    assert zip_path("/data/local-files/?d=photos/x.png") == "photos/x.png"


def test_an_image_dripped_slower_than_the_timeout_is_cut_off(monkeypatch):
    from app.core.settings import get_settings
    from app.labelstudio.service import FetchError, ImageFetcher

    monkeypatch.setattr(get_settings(), "labelstudio_allow_private", True)
    monkeypatch.setattr(get_settings(), "labelstudio_timeout_seconds", 1.0)

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            try:
                for _ in range(40):  # a byte every 0.1 s: each read is quick, the whole answer is not
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(FetchError, match="it did not arrive within 1 s"):
            ImageFetcher(None)(f"http://127.0.0.1:{server.server_port}/slow.png")
        assert time.monotonic() - started < 2.5
    finally:
        server.shutdown()
        server.server_close()


def test_the_ml_backend_refuses_tasks_whose_images_add_up_past_the_budget(
    client,
    auth,
    classifier,  # noqa: F811
    images,
    monkeypatch,
):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "labelstudio_allow_private", True)
    monkeypatch.setattr(get_settings(), "max_json_bytes", 2 * len(png_bytes(4)) - 1)
    config = label_config(choices=("cat", "dog", "bird"))
    tasks = [{"id": 7, "data": {"img": f"{images.url}/public/b.png"}}]
    body = {"tasks": tasks, "label_config": config}
    one = client.post(f"/v1/labelstudio/{classifier}/predict", json=body, headers=auth)
    assert one.status_code == 200, one.text
    body["tasks"] = [*tasks, {"id": 8, "data": {"img": f"{images.url}/public/b.png"}}]
    r = client.post(f"/v1/labelstudio/{classifier}/predict", json=body, headers=auth)
    assert r.status_code == 413, r.text
    assert r.json()["detail"].startswith("task 8: the tasks' images add up to more than")


def test_the_client_reads_a_label_config_as_the_service_does():
    from app.imports.labelstudio import parse_label_config
    from candor.errors import CandorError
    from candor.labelstudio import parsed

    two = (
        '<View>\n  <Text name="caption" value="$text"/>\n'
        '  <Choices name="mood" toName="caption"><Choice value="happy"/></Choices>\n'
        '  <Image name="photo" value="$img"/>\n'
        '  <Choices name="garment" toName="photo"><Choice value="coat"/><Choice value="shirt"/></Choices>\n</View>'
    )
    client, server = parsed(two), parse_label_config(two)
    assert client == server and (client.from_name, client.data_key, client.choices) == (
        "garment",
        "img",
        ("coat", "shirt"),
    )
    with pytest.raises(CandorError, match="no <Choices> control of the label config labels an <Image>"):
        parsed('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>')


def test_the_client_package_imports_no_service_module():
    code = (
        "import sys, candor, candor.client, candor.cli, candor.labelstudio, candor.labelconfig\n"
        "print(sorted(m for m in sys.modules if m == 'app' or m.startswith('app.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
