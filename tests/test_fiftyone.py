"""FiftyOne in and out, through the API on a real PostgreSQL, checked with FiftyOne 1.22.1 itself
(its own venv under build/, driven by subprocess: its pins clash with Candor's). FiftyOne's
importers and exporters run without a fo.Dataset (see tests/fiftyone_tool.py), so no MongoDB.

In: datasets written by FiftyOne's ImageClassificationDirectoryTree and
FiftyOneImageClassificationDataset exporters are imported with `format=fiftyone-tree` /
`format=fiftyone`; an image in several class folders, or labelled with a list, is one item whose
candidate set is those classes. Out: `GET /labels?format=fiftyone` beside the images is loaded by
FiftyOne's FiftyOneImageClassificationDataset importer with the label, confidence and flags."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from tests.helpers import png_bytes
from tests.test_exports import CLASSES, RESULTS, api, finished_job  # noqa: F401
from tests.tool_envs import BUILD, FIFTYONE, run_fiftyone, venv

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
# item -> its classes
SETS = {"a": ["coat", "shirt"], "b": ["dress"], "c": ["coat", "shirt", "dress"]}


@pytest.fixture(scope="module")
def fo_python():
    return venv("fiftyone", FIFTYONE, "fiftyone")


@pytest.fixture(scope="module")
def fo_home():
    return BUILD / "fiftyone-home"


def zip_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


def new_dataset(api, key, classes=CLASSES) -> str:  # noqa: F811
    r = api.post("/v1/datasets", json={"name": "fo", "classes": classes}, headers=key)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post_zip(api, key, ds, body: bytes, fmt: str):  # noqa: F811
    headers = key | {"Content-Type": "application/zip"}
    return api.post(f"/v1/datasets/{ds}/imports", params={"format": fmt}, content=body, headers=headers)


def items(api, key, ds) -> dict[str, list[str]]:  # noqa: F811
    r = api.get(f"/v1/datasets/{ds}/items", headers=key)
    assert r.status_code == 200, r.text
    return {it["id"]: it["candidates"] for it in r.json()["items"]}


def test_directory_tree_written_by_fiftyone_imports_with_candidate_sets(api, fo_python, fo_home, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    samples = []
    for n, (item, labels) in enumerate(SETS.items()):
        copies = []
        for lab in labels:  # the same image copied once per label, under the item's name
            p = src / lab / f"{item}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(png_bytes(n + 1))
            copies.append(str(p))
        samples.append({"labels": labels, "copies": copies})
    out = tmp_path / "tree"
    answer = run_fiftyone(fo_python, fo_home, {"op": "export", "type": "tree", "dir": str(out), "samples": samples})
    assert answer["exported"] == sum(len(v) for v in SETS.values())
    assert sorted(p.name for p in out.iterdir()) == sorted({c for v in SETS.values() for c in v})

    _, key = finished_job(api)
    ds = new_dataset(api, key)
    r = post_zip(api, key, ds, zip_dir(out), "fiftyone-tree")
    assert r.status_code == 201, r.text
    assert r.json()["created"] == len(SETS)
    got = items(api, key, ds)
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in SETS.items()}
    # the same archive again changes nothing
    again = post_zip(api, key, ds, zip_dir(out), "fiftyone-tree")
    assert again.status_code == 200 and again.json()["unchanged"] == len(SETS)


def test_tree_groups_by_content_and_keeps_same_named_different_images_apart(api):  # noqa: F811
    _, key = finished_job(api)
    ds = new_dataset(api, key)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("export/coat/p.png", png_bytes(1))
        zf.writestr("export/shirt/p-copy.png", png_bytes(1))  # same bytes, another name: one item
        zf.writestr("export/coat/001.png", png_bytes(2))  # per-class numbering: different images
        zf.writestr("export/dress/001.png", png_bytes(3))
        zf.writestr("export/.DS_Store", b"x")
    r = post_zip(api, key, ds, buf.getvalue(), "fiftyone-tree")
    assert r.status_code == 201, r.text
    assert items(api, key, ds) == {"p": ["coat", "shirt"], "coat/001": ["coat"], "dress/001": ["dress"]}


def test_labels_json_written_by_fiftyone_imports_lists_as_candidate_sets(api, fo_python, fo_home, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    src.mkdir()
    samples = []
    for n, (item, labels) in enumerate(SETS.items()):
        p = src / f"{item}.png"
        p.write_bytes(png_bytes(n + 1))
        samples.append({"path": str(p), "labels": labels})
    out = tmp_path / "fo"
    command = {"op": "export", "type": "labels", "dir": str(out), "samples": samples, "classes": CLASSES}
    run_fiftyone(fo_python, fo_home, command)
    written = json.loads((out / "labels.json").read_text())
    # FiftyOne writes class indices into its classes list; a list per image with several labels
    assert written["classes"] == CLASSES
    assert written["labels"]["a"] == [0, 1] and written["labels"]["b"] == 2

    _, key = finished_job(api)
    ds = new_dataset(api, key)
    r = post_zip(api, key, ds, zip_dir(out), "fiftyone")
    assert r.status_code == 201, r.text
    assert {k: sorted(v) for k, v in items(api, key, ds).items()} == {k: sorted(v) for k, v in SETS.items()}


def test_fiftyone_export_loads_in_fiftyone_with_confidence_and_flags(api, fo_python, fo_home, tmp_path):  # noqa: F811
    job_id, key = finished_job(api)
    r = api.get(f"/v1/jobs/{job_id}/labels", params={"format": "fiftyone"}, headers=key)
    assert r.status_code == 200, r.text
    out = tmp_path / "export"
    (out / "data").mkdir(parents=True)
    (out / "labels.json").write_bytes(r.content)
    for n, item in enumerate(RESULTS):
        (out / "data" / f"{item}.png").write_bytes(png_bytes(n + 1))
    loaded = run_fiftyone(fo_python, fo_home, {"op": "import", "dir": str(out)})
    assert loaded["classes"] == CLASSES
    for item, (label, post, amb, sus, _) in RESULTS.items():
        got = loaded["samples"][f"{item}.png"]
        assert got["label"] == label
        assert got["confidence"] == pytest.approx(post[label])
        assert got["attributes"]["ambiguous"] is amb
        assert got["attributes"]["candidates_suspect"] is sus
        assert got["attributes"]["label_quality"] == pytest.approx(post[label])


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "files", "named"),
    [
        ("fiftyone-tree", {"_unlabeled/q.png": png_bytes(1)}, "'_unlabeled/q.png'"),
        ("fiftyone-tree", {"cow/q.png": png_bytes(1)}, "candidate 'cow' is not among the classes"),
        ("fiftyone-tree", {"coat/q.png": b"not an image"}, "(id 'q')"),
        ("fiftyone", {"data/q.png": png_bytes(1)}, "no labels.json"),
        ("fiftyone", {"labels.json": b"{oops", "data/q.png": png_bytes(1)}, "'labels.json' is not valid JSON"),
        ("fiftyone", {"labels.json": b'{"classes": null, "labels": {"r": "coat"}}'}, "'r' has no image at 'data/r.*'"),
        (
            "fiftyone",
            {"labels.json": b'{"classes": ["coat"], "labels": {"q": 4}}', "data/q.png": png_bytes(1)},
            "label of 'q' is class index 4",
        ),
        (
            "fiftyone",
            {"labels.json": b'{"classes": null, "labels": {"q": ["coat", "cow"]}}', "data/q.png": png_bytes(1)},
            "(id 'q'): candidate 'cow' is not among the classes",
        ),
    ],
)
def test_bad_fiftyone_archives_answer_422_naming_the_file_or_item(api, fmt, files, named):  # noqa: F811
    _, key = finished_job(api)
    ds = new_dataset(api, key)
    r = post_zip(api, key, ds, _zip(files), fmt)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert named in r.json()["detail"]
    assert items(api, key, ds) == {}


def test_the_route_and_the_client_know_the_same_import_formats():
    from app.imports import READERS
    from candor.formats import IMPORT_FORMATS

    assert set(IMPORT_FORMATS) == set(READERS)


@pytest.mark.parametrize(
    "labels_json",
    [
        b'{"classes": "x", "labels": {}}',
        b'{"labels": {"q": [[1]]}}',
        b'{"labels": {"q": 1.5}}',
        b'{"labels": {"q": {"label": true}}}',
        b'{"labels": {"q": []}}',
        b'{"labels": []}',
        b"[]",
    ],
)
def test_odd_labels_json_answers_422_never_500(api, labels_json):  # noqa: F811
    _, key = finished_job(api)
    ds = new_dataset(api, key)
    r = post_zip(api, key, ds, _zip({"labels.json": labels_json, "data/q.png": png_bytes(1)}), "fiftyone")
    assert r.status_code == 422, r.text
    assert r.json()["detail"] and "{'" not in r.text
