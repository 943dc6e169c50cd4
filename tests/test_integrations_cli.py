"""The labelling tools' paths in one command each, against the real service (`candor serve` on
PostgreSQL, a Celery worker): `candor remote run EXPORT --import-format ...` for a FiftyOne
directory tree and an Argilla export, `Client.upload(..., format="fiftyone")`, and the labels out
as FiftyOne labels.json, Argilla records and cleanlab's .npz."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from candor import Client
from candor.tools import import_classes
from tests.helpers import color_image, png_bytes
from tests.sdk_service import JOB_CONFIG, celery_worker, new_key, service_url  # noqa: F401

CANDOR = str(Path(sys.executable).with_name("candor"))
CLASSES = ["bird", "cat", "dog"]


def remote(service_url: str, key: str, *argv: str) -> subprocess.CompletedProcess:  # noqa: F811
    env = os.environ | {"CANDOR_SERVER": service_url, "CANDOR_API_KEY": key}
    return subprocess.run([CANDOR, "remote", *argv], env=env, capture_output=True, text=True, timeout=300)


def job_of(stderr: str) -> str:
    return re.search(r"job ([0-9a-f-]{36}) started", stderr).group(1)


@pytest.fixture
def config(tmp_path) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(JOB_CONFIG))
    return str(path)


def test_a_fiftyone_tree_runs_in_one_command_and_comes_out_for_fiftyone_and_cleanlab(
    service_url,  # noqa: F811
    celery_worker,  # noqa: F811
    tmp_path,
    config,
):
    tree = tmp_path / "tree"
    for k in range(6):
        for cls in (CLASSES[k % 3], CLASSES[(k + 1) % 3]):  # each image filed under two classes
            (tree / cls).mkdir(parents=True, exist_ok=True)
            color_image(500 + k).save(tree / cls / f"im{k}.png")
    key = new_key()
    out = tmp_path / "labels.jsonl"
    run = remote(
        service_url, key, "run", str(tree), "--import-format", "fiftyone-tree", "--config", config, "--out", str(out)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "uploaded 6 items: 6 created" in run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"]: sorted(r["posterior"]) for r in rows} == {
        f"im{k}": sorted([CLASSES[k % 3], CLASSES[(k + 1) % 3]]) for k in range(6)
    }
    assert all(0 <= r["label_quality"] <= 1 for r in rows)
    job = job_of(run.stderr)

    fo = tmp_path / "labels.json"
    done = remote(service_url, key, "labels", job, "--format", "fiftyone", "--out", str(fo))
    assert done.returncode == 0, done.stderr
    doc = json.loads(fo.read_text())
    assert doc["classes"] == CLASSES and set(doc["labels"]) == {f"im{k}" for k in range(6)}

    npz = tmp_path / "pred_probs.npz"
    done = remote(service_url, key, "labels", job, "--out", str(npz))  # the suffix picks pred_probs_npz
    assert done.returncode == 0, done.stderr
    with np.load(npz, allow_pickle=False) as arrays:
        assert arrays["pred_probs"].shape == (6, 3) and arrays["classes"].tolist() == CLASSES


def argilla_zip(path: Path) -> None:
    records = [
        {
            "id": f"r{k}",
            "fields": {"image": f"images/r{k}.png"},
            "responses": {
                "label": [
                    {"value": CLASSES[k % 3], "user_id": str(uuid.UUID(int=1))},
                    {"value": CLASSES[(k + 1) % 3], "user_id": str(uuid.UUID(int=2))},
                ]
            },
        }
        for k in range(6)
    ]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("records.json", json.dumps(records))
        for k in range(6):
            zf.writestr(f"images/r{k}.png", png_bytes(600 + k))


def test_an_argilla_export_runs_in_one_command_with_its_annotators(
    service_url,  # noqa: F811
    celery_worker,  # noqa: F811
    tmp_path,
    config,
):
    export = tmp_path / "argilla.zip"
    argilla_zip(export)
    assert import_classes(export, "argilla") == CLASSES
    key = new_key()
    out = tmp_path / "labels.jsonl"
    run = remote(
        service_url, key, "run", str(export), "--import-format", "argilla", "--config", config, "--out", str(out)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 6
    assert [a["annotator"] for a in rows["r0"]["annotations"]] == [str(uuid.UUID(int=1)), str(uuid.UUID(int=2))]
    assert rows["r0"]["agreed"] and rows["r0"]["agreed"][0] in {str(uuid.UUID(int=1)), str(uuid.UUID(int=2))}
    records = tmp_path / "records.json"
    done = remote(service_url, key, "labels", job_of(run.stderr), "--format", "argilla", "--out", str(records))
    assert done.returncode == 0, done.stderr
    assert {r["id"] for r in json.loads(records.read_text())} == set(rows)


def test_the_client_uploads_a_fiftyone_labels_json_folder_and_refuses_an_unknown_format(
    service_url,  # noqa: F811
    tmp_path,
):
    folder = tmp_path / "fo"
    (folder / "data").mkdir(parents=True)
    labels = {}
    for k in range(4):
        (folder / "data" / f"s{k}.png").write_bytes(png_bytes(700 + k))
        labels[f"s{k}"] = [k % 3, (k + 1) % 3]
    (folder / "labels.json").write_text(json.dumps({"classes": CLASSES, "labels": labels}))
    with Client(service_url, api_key=new_key()) as client:
        ds = client.create_dataset("fo", import_classes(folder, "fiftyone"))
        result = client.upload(ds, folder, format="fiftyone")
        assert result.created == 4
        items = {it.id: it.candidates for it in client.list_items(ds)}
        assert items["s0"] == ["bird", "cat"] and items["s2"] == ["dog", "bird"]
        with pytest.raises(ValueError, match="unknown import format"):
            client.upload(ds, folder, format="coco")
