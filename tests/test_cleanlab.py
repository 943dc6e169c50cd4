"""cleanlab 2.9.0 reads Candor's pred_probs (JSON and .npz) as they are, and Candor's label_quality
is cleanlab's own score: app.ml.quality against cleanlab.rank.get_label_quality_scores, and
cleanlab.filter.find_label_issues accepting the exported labels and pred_probs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from app.ml.quality import label_quality_scores
from tests.test_exports import CLASSES, RESULTS, api, finished_job, labels  # noqa: F401


@pytest.mark.parametrize("method", ["self_confidence", "normalized_margin"])
def test_label_quality_is_cleanlabs_score(method):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 7)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = rng.integers(0, 7, size=300)
    ours = label_quality_scores(probs, given, method)
    theirs = get_label_quality_scores(given, probs, method=method, adjust_pred_probs=False)
    assert np.allclose(ours, theirs, atol=1e-12)
    assert ours.shape == (300,) and not np.allclose(ours, ours[0])


def test_pred_probs_json_and_npz_feed_cleanlab_as_they_are(api):  # noqa: F811
    job_id, key = finished_job(api)
    doc = labels(api, key, job_id, format="pred_probs")
    probs = np.asarray(doc["pred_probs"])
    given = np.asarray(doc["labels"])
    assert probs.shape == (len(RESULTS), len(CLASSES)) and doc["classes"] == CLASSES
    assert np.allclose(doc["label_quality"], get_label_quality_scores(given, probs, adjust_pred_probs=False))

    r = api.get(f"/v1/jobs/{job_id}/labels", params={"format": "pred_probs_npz"}, headers=key)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="labels-{job_id}.npz"'
    with np.load(io.BytesIO(r.content), allow_pickle=False) as npz:
        assert set(npz.files) == {"pred_probs", "labels", "label_quality", "ids", "classes", "out_of_sample"}
        assert np.array_equal(npz["pred_probs"], probs) and np.array_equal(npz["labels"], given)
        assert npz["ids"].tolist() == doc["ids"] and npz["classes"].tolist() == CLASSES
        assert np.allclose(npz["label_quality"], doc["label_quality"]) and not bool(npz["out_of_sample"])

    # cleanlab's own checks accept the shapes; a label the pred_probs rule out is an issue
    issues = find_label_issues(given, probs, filter_by="confident_learning")
    assert issues.shape == (len(RESULTS),) and issues.dtype == bool
    flipped = given.copy()
    flipped[0] = CLASSES.index("dress")  # x's candidates are coat and shirt
    ranked = find_label_issues(flipped, probs, return_indices_ranked_by="self_confidence")
    assert ranked.ndim == 1 and set(ranked.tolist()) <= {0, 1, 2}
    assert int(np.argmin(get_label_quality_scores(flipped, probs))) == 0
