"""Out-of-sample pred_probs (cross_validation.folds): k trainings on k-1 folds each predicting the
held-out fold; then a real job on PostgreSQL whose pred_probs export is out-of-sample and feeds
cleanlab.filter.find_label_issues."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from app.ml.config import CleanConfig
from app.ml.crossval import fold_of, out_of_sample
from tests.test_jobs_worker import CONFIG, api, committed, inline, key, run_all, upload  # noqa: F401

CLASSES = ["cat", "dog", "bird", "fish"]


@pytest.fixture(scope="module")
def problem(tiny):
    g = torch.Generator().manual_seed(1)
    centers = tiny.prompt_encoder(CLASSES, 4)(torch.randn(4, tiny.ctx_dim, generator=g) * 0.5).detach()
    n = 60
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    feats = F.normalize(centers[y] + 0.05 * torch.randn(n, centers.shape[1], generator=g), dim=1)
    mask = (torch.rand(n, len(CLASSES), generator=g) < 0.3).float()
    mask[torch.arange(n), y] = 1.0
    return feats, mask, y


def small_cfg() -> CleanConfig:
    return CleanConfig(backbone="tiny").with_overrides(
        prompt={"n_ctx": 4}, train={"epochs": 2, "batch_size": 16, "lr": 0.01}
    )


def test_folds_partition_the_items_evenly_and_reproducibly():
    f = fold_of(23, 5, seed=3)
    assert sorted(torch.bincount(f).tolist()) == [4, 4, 5, 5, 5]
    assert torch.equal(f, fold_of(23, 5, seed=3)) and not torch.equal(f, fold_of(23, 5, seed=4))
    with pytest.raises(ValueError, match="needs at least 5 items"):
        fold_of(4, 5, seed=0)


def test_an_items_row_does_not_depend_on_its_own_candidates(tiny, problem):
    feats, mask, _ = problem
    cfg = small_cfg()
    probs = out_of_sample(tiny, CLASSES, feats, mask, cfg, folds=3)
    assert probs.shape == (len(feats), len(CLASSES))
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(feats), dtype=torch.float64), atol=1e-6)
    # change the candidate sets of one fold's items: their rows come from a model that never saw them
    fold = fold_of(len(feats), 3, cfg.train.seed)
    held = fold == 0
    other = mask.clone()
    other[held] = 1.0 - other[held]
    other[held & (other.sum(dim=1) == 0)] = 1.0
    again = out_of_sample(tiny, CLASSES, feats, other, cfg, folds=3)
    assert torch.allclose(again[held], probs[held], atol=1e-9)
    assert not torch.allclose(again[~held], probs[~held], atol=1e-6)


def test_votes_train_each_fold_and_a_held_out_items_own_votes_do_not_score_it(tiny, problem):
    from app.ml.crowd import Votes

    feats, _, y = problem
    n, k = len(feats), len(CLASSES)
    wide = torch.ones(n, k)  # candidate sets say nothing: only the votes can teach

    def annotations(truth: torch.Tensor) -> list[list[dict]]:
        g = torch.Generator().manual_seed(7)  # the same noisy votes on every call
        out = []
        for i in range(n):
            out.append([{"annotator": f"a{j}", "label": CLASSES[int(truth[i])]} for j in range(2)])
            out[-1].append({"annotator": "noisy", "label": CLASSES[int(torch.randint(0, k, (1,), generator=g))]})
        return out

    index = {c: i for i, c in enumerate(CLASSES)}
    cfg = small_cfg().with_overrides(train={"epochs": 4})
    # the annotators call every class by another's name, against the prior: only folds taught by
    # the votes follow them (on the tiny random backbone the prompt moves little in 4 epochs)
    said = (y + 1) % k
    votes = Votes.from_annotations(annotations(said), index)
    with_votes = out_of_sample(tiny, CLASSES, feats, wide, cfg, folds=3, votes=votes)
    without = out_of_sample(tiny, CLASSES, feats, wide, cfg, folds=3)
    follows = float((with_votes.argmax(dim=1) == said).double().mean())
    base = float((without.argmax(dim=1) == said).double().mean())
    assert follows > base + 0.1, (follows, base)
    # other votes on one fold's items: their rows do not move, the other folds' rows do
    held = fold_of(n, 3, cfg.train.seed) == 0
    moved = torch.where(held, y, said)
    again = out_of_sample(
        tiny, CLASSES, feats, wide, cfg, folds=3, votes=Votes.from_annotations(annotations(moved), index)
    )
    assert torch.allclose(again[held], with_votes[held], atol=1e-9)
    assert not torch.allclose(again[~held], with_votes[~held], atol=1e-6)


def test_a_job_with_folds_exports_out_of_sample_pred_probs_cleanlab_accepts(api, key, inline):  # noqa: F811
    ds = upload(api, key, n=12)
    config = CONFIG | {"cross_validation": {"folds": 3}}
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": config}, headers=key)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    run_all(inline)
    job = api.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert job["state"] == "succeeded", job
    doc = api.get(f"/v1/jobs/{job_id}/labels", params={"format": "pred_probs"}, headers=key).json()
    probs, given = np.asarray(doc["pred_probs"]), np.asarray(doc["labels"])
    assert doc["out_of_sample"] is True and probs.shape == (12, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # out-of-sample rows spread over every class, not only over the item's candidates
    assert (probs > 0).all()
    assert np.allclose(doc["label_quality"], get_label_quality_scores(given, probs, adjust_pred_probs=False), atol=1e-6)
    issues = find_label_issues(given, probs)
    assert issues.shape == (12,) and issues.dtype == bool
    rows = [json.loads(line) for line in api.get(f"/v1/jobs/{job_id}/labels", headers=key).text.splitlines()]
    assert all(len(row["pred_probs_oos"]) == 3 for row in rows)
    # a job without folds stays in-sample
    start = len(inline)
    plain = api.post("/v1/jobs", json={"dataset_id": ds, "config": CONFIG}, headers=key).json()["id"]
    run_all(inline, start)
    doc = api.get(f"/v1/jobs/{plain}/labels", params={"format": "pred_probs"}, headers=key).json()
    assert doc["out_of_sample"] is False


def test_one_fold_is_refused():
    with pytest.raises(ValueError, match="folds must be 0"):
        CleanConfig(cross_validation={"folds": 1})
