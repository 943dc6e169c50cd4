"""Annotators' votes as evidence: the EM (app/ml/crowd.py), its config, and the per-annotator
estimates through a running service (`candor serve` as a process, a Celery worker on Redis), the
Python client and `candor remote annotators`."""

from __future__ import annotations

import csv
import io
import subprocess
import uuid

import httpx
import pytest
import torch

from app.ml.config import CleanConfig
from app.ml.crowd import Votes, fit_votes
from candor import Client
from tests.helpers import b64png
from tests.sdk_service import CANDOR, JOB_CONFIG, celery_worker, new_key, service_url  # noqa: F401

CLASSES = ["cat", "dog", "bird"]


# ---- the EM, pure ----------------------------------------------------------------------------------
def synthetic(n: int, accuracies: list[float], per_item: int, seed: int):
    """Items of K = 4 classes with features that carry the class, and votes of annotators of known
    accuracy (errors uniform over the other classes)."""
    g = torch.Generator().manual_seed(seed)
    k = 4
    y = torch.randint(0, k, (n,), generator=g)
    feats = torch.randn(n, 16, generator=g) + 1.5 * torch.nn.functional.one_hot(y, 16).float()
    item, ann, lab = [], [], []
    for i in range(n):
        for j in torch.randperm(len(accuracies), generator=g)[:per_item].tolist():
            right = float(torch.rand(1, generator=g)) < accuracies[j]
            wrong = (int(y[i]) + 1 + int(torch.randint(0, k - 1, (1,), generator=g))) % k
            item.append(i), ann.append(j), lab.append(int(y[i]) if right else wrong)
    votes = Votes(
        item=torch.tensor(item),
        annotator=torch.tensor(ann),
        label=torch.tensor(lab),
        annotators=[f"a{j}" for j in range(len(accuracies))],
        n_items=n,
    )
    return feats, y, votes


def test_the_em_recovers_annotator_accuracies_and_beats_majority_vote():
    accuracies = [0.9, 0.8, 0.7, 0.6, 0.25]  # the last one a spammer (chance is 0.25)
    feats, y, votes = synthetic(1200, accuracies, 3, seed=3)
    counts = torch.zeros(1200, 4).index_put_((votes.item, votes.label), torch.ones(len(votes.item)), accumulate=True)
    majority = float((counts.argmax(dim=1) == y).float().mean())
    for model in ("none", "adapter"):
        res = fit_votes(feats, votes, 4, model=model, rounds=4, seed=0)
        acc = float((res.posterior.argmax(dim=1) == y).float().mean())
        assert acc > majority, (model, acc, majority)
        truth = [float((votes.label[votes.annotator == j] == y[votes.item[votes.annotator == j]]).float().mean())
                 for j in range(len(accuracies))]  # fmt: skip
        est = [a.accuracy for a in res.annotators]
        assert max(abs(a - b) for a, b in zip(est, truth, strict=True)) < 0.06, (model, est, truth)
        assert [a.items for a in res.annotators] == [int((votes.annotator == j).sum()) for j in range(5)]
        rows = res.confusion.sum(dim=2)
        assert torch.allclose(rows, torch.ones_like(rows))
    adapter = fit_votes(feats, votes, 4, model="adapter", rounds=4, seed=0)
    none = fit_votes(feats, votes, 4, model="none", rounds=4, seed=0)
    assert (adapter.posterior.argmax(1) == y).float().mean() > (none.posterior.argmax(1) == y).float().mean()


def test_a_single_wrong_vote_can_be_overruled_and_ground_truth_cannot():
    feats, y, votes = synthetic(800, [0.95, 0.9, 0.85, 0.6], 1, seed=5)
    res = fit_votes(feats, votes, 4, model="adapter", rounds=4, seed=0)
    wrong = votes.label != y[votes.item]
    fixed = res.posterior.argmax(dim=1)[votes.item[wrong]] == y[votes.item[wrong]]
    assert float(fixed.float().mean()) > 0.3  # lone wrong votes lose to clear features
    votes_right = 1 - float(wrong.float().mean())
    assert float((res.posterior.argmax(dim=1) == y).float().mean()) > votes_right + 0.02
    anns = [[{"annotator": "r", "label": "dog", "ground_truth": True}, {"annotator": "b", "label": "cat"}]] + [
        [{"annotator": "b", "label": "cat"}] for _ in range(9)
    ]
    truth = Votes.from_annotations(anns, {c: k for k, c in enumerate(CLASSES)})
    res = fit_votes(torch.randn(10, 4), truth, 3, model="none", rounds=2)
    assert res.posterior[0].tolist() == [0.0, 1.0, 0.0]


def test_a_subset_of_votes_renumbers_items_and_annotators_and_keeps_ground_truth():
    anns = [
        [{"annotator": "ann", "label": "cat"}],
        [{"annotator": "bob", "label": "dog"}, {"annotator": "cy", "label": "bird", "ground_truth": True}],
        None,
        [{"annotator": "bob", "label": "cat"}],
    ]
    votes = Votes.from_annotations(anns, {c: k for k, c in enumerate(CLASSES)})
    sub = votes.subset(torch.tensor([3, 1, 2]))
    assert sub.n_items == 3 and sub.annotators == ["bob", "cy"]
    who = [sub.annotators[j] for j in sub.annotator.tolist()]
    got = sorted(zip(sub.item.tolist(), who, sub.label.tolist(), strict=True))
    assert got == [(0, "bob", 0), (1, "bob", 1), (1, "cy", 2)]
    assert sub.truth.tolist() == [-1, 2, -1]
    assert votes.subset(torch.tensor([0])).truth is None
    assert votes.subset(torch.tensor([2])) is None


def test_items_without_annotations_leave_votes_off():
    assert Votes.from_annotations([None, [], None], {"cat": 0}) is None
    assert CleanConfig().votes.enabled and CleanConfig().votes.model == "adapter"


@pytest.mark.parametrize(
    "votes, field",
    [
        ({"rounds": 0}, "votes.rounds"),
        ({"model": "bert"}, "votes.model"),
        ({"smoothing": -1}, "votes.smoothing"),
        ({"teacher_weight": 1.5}, "votes.teacher_weight"),
        ({"folds": 1}, "votes.folds"),
        ({"unknown": 1}, "votes.unknown"),
    ],
)
def test_bad_votes_settings_are_422_naming_the_field(client, auth, votes, field):
    r = client.post("/v1/datasets", json={"name": "d", "classes": CLASSES}, headers=auth)
    ds = r.json()["id"]
    r = client.post("/v1/jobs", json={"dataset_id": ds, "config": {"backbone": "tiny", "votes": votes}}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in r.json()["detail"], r.json()["detail"]
    assert client.get("/v1/jobs", headers=auth).json()["items"] == []


# ---- through the service -------------------------------------------------------------------------
def crowd_items(n: int) -> list[dict]:
    """Items whose true class is k % 3: 'good' and 'fair' mostly right, 'spam' always off by one."""
    items = []
    for k in range(n):
        y = CLASSES[k % 3]
        off = CLASSES[(k + 1) % 3]
        anns = [
            {"annotator": "good", "label": y},
            {"annotator": "fair", "label": y if k % 5 else off},
            {"annotator": "spam", "label": off},
        ]
        items.append({"id": f"c{k}", "image_base64": b64png(k), "annotations": anns[: 3 if k % 4 else 2]})
    return items


def test_annotators_through_the_api_the_client_and_the_cli(service_url, celery_worker, tmp_path):  # noqa: F811
    key = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    api = httpx.Client(base_url=service_url, headers=auth, timeout=60)
    ds = api.post("/v1/datasets", json={"name": "crowd", "classes": CLASSES}).json()["id"]
    items = crowd_items(24)
    assert api.post(f"/v1/datasets/{ds}/items", json={"items": items}).status_code == 201
    plain = api.post("/v1/datasets", json={"name": "plain", "classes": CLASSES}).json()["id"]
    bare = [{"id": "p0", "image_base64": b64png(1), "candidates": ["cat", "dog"]}]
    assert api.post(f"/v1/datasets/{plain}/items", json={"items": bare}).status_code == 201

    with Client(service_url, key, progress=False) as sdk:
        job = sdk.start_job(ds, JOB_CONFIG)
        pending = api.get(f"/v1/jobs/{job.id}/annotators")
        if pending.status_code != 200:  # still running: not finished yet
            assert pending.status_code == 409 and "once it has succeeded" in pending.json()["detail"]
        job = job.wait(timeout=300)
        body = api.get(f"/v1/jobs/{job.id}/annotators").json()
        assert body["classes"] == CLASSES
        by_name = {a["annotator"]: a for a in body["annotators"]}
        assert sorted(by_name) == ["fair", "good", "spam"]
        expected_items = {"good": 24, "fair": 24, "spam": sum(1 for k in range(24) if k % 4)}
        assert {n: a["items"] for n, a in by_name.items()} == expected_items
        assert by_name["good"]["accuracy"] > by_name["fair"]["accuracy"] > by_name["spam"]["accuracy"]
        assert by_name["spam"]["accuracy"] < 0.3 and by_name["good"]["accuracy"] > 0.8
        for a in by_name.values():
            for row in a["confusion"].values():
                assert abs(sum(row.values()) - 1) < 0.01
        assert by_name["spam"]["confusion"]["cat"]["dog"] > 0.5  # spam says dog for a cat

        table = list(csv.DictReader(io.StringIO(api.get(f"/v1/jobs/{job.id}/annotators?format=csv").text)))
        assert [r["annotator"] for r in table] == ["fair", "good", "spam"]
        assert {r["annotator"]: int(r["items"]) for r in table} == expected_items

        got = sdk.annotators(job.id)
        assert {a.annotator: a.accuracy for a in got} == {n: a["accuracy"] for n, a in by_name.items()}

        rows = list(sdk.labels(job.id))
        assert len(rows) == 24
        for row in rows:
            assert row.agreed == [a.annotator for a in row.annotations if a.label == row.label]
        right = sum(row.label == CLASSES[int(row.id[1:]) % 3] for row in rows)
        assert right >= 22, right  # the votes, not the union, decide

        plain_job = sdk.start_job(plain, JOB_CONFIG).wait(timeout=300)
        assert sdk.annotators(plain_job.id) == []
        assert api.get(f"/v1/jobs/{plain_job.id}/annotators?format=csv").text.strip() == (
            "annotator,items,accuracy,confusion"
        )

    out = tmp_path / "annotators.csv"
    done = subprocess.run(
        [CANDOR, "remote", "annotators", str(job.id), "--out", str(out), "--server", service_url, "--key", key],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [r["annotator"] for r in csv.DictReader(out.open())] == ["fair", "good", "spam"]

    other = {"Authorization": f"Bearer {new_key()}"}
    r = httpx.get(f"{service_url}/v1/jobs/{job.id}/annotators", headers=other)
    assert r.status_code == 404
    assert httpx.get(f"{service_url}/v1/jobs/{uuid.uuid4()}/annotators", headers=auth).status_code == 404
    bad = api.get(f"/v1/jobs/{job.id}/annotators?format=xml")
    assert bad.status_code == 422 and "format" in bad.text


# ---- candor clean --------------------------------------------------------------------------------
def test_candor_clean_writes_the_annotators_next_to_the_labels(tmp_path, capsys):
    import json

    from app.cli import main
    from tests.helpers import png_bytes

    lines = []
    for k, item in enumerate(crowd_items(12)):
        (tmp_path / f"{item['id']}.png").write_bytes(png_bytes(k))
        lines.append({"id": item["id"], "image": f"{item['id']}.png", "annotations": item["annotations"]})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "out"
    argv = ["clean", tmp_path / "manifest.jsonl", "--classes", tmp_path / "classes.txt", "--out", out]
    code = main([str(a) for a in [*argv, "--backbone", "tiny", "--epochs", "2", "--quiet"]])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "annotators.json").read_text())
    assert report["classes"] == CLASSES
    by_name = {a["annotator"]: a for a in report["annotators"]}
    assert {n: a["items"] for n, a in by_name.items()} == {"good": 12, "fair": 12, "spam": 9}
    assert by_name["good"]["accuracy"] > by_name["spam"]["accuracy"]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sum(r["label"] == CLASSES[int(r["id"][1:]) % 3] for r in rows) >= 11
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["votes"]["annotators"] == 3
