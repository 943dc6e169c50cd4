"""`candor remote ...` against the real service (`candor serve` on PostgreSQL, a Celery worker):
a folder run end to end by the console script, then the small verbs through `app.cli.main`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from tests.helpers import color_image
from tests.sdk_service import JOB_CONFIG, celery_worker, new_key, service_url  # noqa: F401

CANDOR = str(Path(sys.executable).with_name("candor"))
CLASSES = ["bird", "cat", "dog"]  # the class folders, sorted


@pytest.fixture(scope="module")
def finished_run(service_url, celery_worker, tmp_path_factory):  # noqa: F811
    """`candor remote run FOLDER` by the console script, server and key from the environment."""
    root = tmp_path_factory.mktemp("remote")
    folder = root / "pets"
    for cls in CLASSES:
        (folder / cls).mkdir(parents=True)
    for k in range(8):
        color_image(300 + k).save(folder / CLASSES[k % 3] / f"p{k}.png")
        color_image(300 + k).save(folder / CLASSES[(k + 1) % 3] / f"p{k}.png")
    config = root / "config.json"
    config.write_text(json.dumps(JOB_CONFIG))
    key = new_key()
    env = os.environ | {"CANDOR_SERVER": service_url, "CANDOR_API_KEY": key}
    out = root / "labels.jsonl"
    run = subprocess.run(
        [CANDOR, "remote", "run", str(folder), "--config", str(config), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run, out, key, folder, root


def test_remote_run_uploads_a_folder_runs_the_job_and_writes_the_labels(finished_run):
    run, out, _, _, _ = finished_run
    assert run.returncode == 0, run.stderr[-3000:]
    assert "uploaded 8 items: 8 created, 0 unchanged" in run.stderr
    assert "succeeded: 8 labels (" in run.stderr and f"written to {out}" in run.stderr
    assert "upload: 100%" in run.stderr  # the progress bars
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"p{k}" for k in range(8)]
    for r in rows:
        k = int(r["id"][1:])
        assert set(r["posterior"]) == {CLASSES[k % 3], CLASSES[(k + 1) % 3]} and r["label"] in r["posterior"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_the_small_verbs_list_show_fetch_and_refuse_plainly(finished_run, service_url, capsys, tmp_path):  # noqa: F811
    run, _, key, folder, _ = finished_run
    assert run.returncode == 0, run.stderr[-3000:]
    auth = ["--server", service_url, "--key", key]

    rc, out, _ = cli(capsys, "remote", "datasets", *auth)
    assert rc == 0 and len(out.splitlines()) == 1 and "\tpets\t3 classes\t" in out
    rc, out, _ = cli(capsys, "remote", "jobs", *auth, "--json")
    jobs = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and len(jobs) == 1 and jobs[0]["state"] == "succeeded"
    job, clf = jobs[0]["id"], jobs[0]["classifier_id"]
    rc, out, _ = cli(capsys, "remote", "classifiers", *auth)
    assert rc == 0 and out.startswith(f"{clf}\ttiny\t3 classes\tjob {job}")

    rc, out, _ = cli(capsys, "remote", "status", job, *auth)
    assert rc == 0 and out.strip() == f"job {job}: succeeded; classifier {clf}"
    rc, out, _ = cli(capsys, "remote", "status", job, "--wait", "--json", "--quiet", *auth)
    assert rc == 0 and json.loads(out)["state"] == "succeeded" and json.loads(out)["config"]["backbone"] == "tiny"

    csv_out = tmp_path / "labels.csv"
    rc, _, err = cli(capsys, "remote", "labels", job, "--out", str(csv_out), *auth)
    lines = csv_out.read_text().splitlines()
    assert rc == 0 and lines[0].startswith("id,label,confidence") and len(lines) == 9
    assert "wrote 8 labels" in err and str(csv_out) in err

    ls_out = tmp_path / "predictions.json"
    rc, _, err = cli(
        capsys, "remote", "labels", job, "--out", str(ls_out), "--format", "labelstudio", "--from-name", "pet", *auth
    )
    preds = json.loads(ls_out.read_text())
    assert rc == 0 and len(preds) == 8 and f"as labelstudio to {ls_out}" in err
    assert {p["result"][0]["from_name"] for p in preds} == {"pet"}
    assert {p["result"][0]["value"]["choices"][0] for p in preds} <= set(CLASSES)

    rc, out, _ = cli(capsys, "remote", "predict", clf, str(folder / "cat" / "p1.png"), "--top-k", "2", *auth)
    pred = json.loads(out)
    assert rc == 0 and pred["label"] in CLASSES and len(pred["top"]) == 2

    rc, _, err = cli(capsys, "remote", "cancel", job, *auth)
    assert rc == 1 and err.strip() == f"candor: error: Conflict: job {job} is already succeeded"

    missing = "00000000-0000-4000-8000-000000000000"
    rc, _, err = cli(capsys, "remote", "status", missing, *auth)
    assert rc == 1 and err.strip() == f"candor: error: Not found: job {missing} does not exist"

    rc, _, err = cli(capsys, "remote", "jobs", "--server", service_url, "--key", "wrong")
    assert rc == 1 and err.startswith("candor: error: Unauthorized")


def test_remote_run_reports_a_rejected_upload_by_item_and_starts_no_job(service_url, capsys, tmp_path):  # noqa: F811
    (tmp_path / "img").mkdir()
    color_image(1).save(tmp_path / "img" / "a.png")
    (tmp_path / "img" / "b.png").write_bytes(b"not an image")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        json.dumps({"id": "a", "image": "img/a.png", "candidates": ["cat"]})
        + "\n"
        + json.dumps({"id": "b", "image": "img/b.png", "candidates": ["cat", "dog"]})
        + "\n"
    )
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    key = new_key()
    argv = ["remote", "run", str(manifest), "--classes", str(classes), "--out", str(tmp_path / "l.csv")]
    rc, _, err = cli(capsys, *argv, "--server", service_url, "--key", key, "--quiet")
    assert rc == 1
    assert err.splitlines()[-1] == (
        "candor: error: Upload rejected: 1 of 2 items rejected, nothing stored; first: item 1 (id 'b'): "
        "not a readable image (unknown or unsupported format)"
    )
    dataset = err.split()[1]
    assert f"run again with --dataset {dataset}" in err
    assert "Traceback" not in err and not (tmp_path / "l.csv").exists()
    rc, out, _ = cli(capsys, "remote", "jobs", "--server", service_url, "--key", key)
    assert rc == 0 and out == ""

    (tmp_path / "img" / "b.png").unlink()  # fixed: b's image is found by its id; the same dataset again
    color_image(2).save(tmp_path / "img" / "b.png")
    argv = [*argv, "--dataset", dataset, "--server", service_url, "--key", key, "--quiet", "--epochs", "0"]
    rc, _, err = cli(capsys, *argv)
    assert "uploaded 2 items: 2 created, 0 unchanged" in err
    assert rc == 1 and err.splitlines()[-1].startswith("candor: error: Validation failed: body.config.train.epochs")


def test_remote_without_a_key_says_how_to_give_one(capsys, monkeypatch):
    monkeypatch.delenv("CANDOR_API_KEY", raising=False)
    rc, _, err = cli(capsys, "remote", "datasets", "--server", "http://127.0.0.1:9")
    assert rc == 1 and err.strip() == "candor: error: no API key: pass --key KEY or set CANDOR_API_KEY"


def test_remote_download_writes_a_folder_candor_predict_loads(finished_run, service_url, capsys, tmp_path):  # noqa: F811
    run, _, key, folder, _ = finished_run
    assert run.returncode == 0, run.stderr[-3000:]
    auth = ["--server", service_url, "--key", key]
    rc, out, _ = cli(capsys, "remote", "classifiers", *auth)
    clf = out.split()[0]
    rc, _, err = cli(capsys, "remote", "download", clf, "--out", str(tmp_path / "clf"), *auth)
    assert rc == 0 and f"classifier {clf}" in err and "candor predict" in err
    image = str(folder / "cat" / "p1.png")
    assert cli(capsys, "predict", str(tmp_path / "clf"), image, "--top-k", "1")[0] == 0
