"""Label quality scores with cleanlab's definitions (``cleanlab.rank.get_label_quality_scores``),
without cleanlab at run time.

For item i with given label y_i and predicted probabilities p_i over all K classes:

* ``self_confidence``: p_i[y_i] (cleanlab's default method);
* ``normalized_margin``: (p_i[y_i] - max_{k != y_i} p_i[k] + 1) / 2.

Both lie in [0, 1]; low means the label is likely wrong. Candor scores its own chosen label: with
the in-sample pred_probs (the posterior over the candidates, zero elsewhere) the self-confidence
is the label's confidence; with out-of-sample pred_probs (``app.ml.crossval``) it is the
probability a model that never saw the item gives Candor's label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METHODS = ("self_confidence", "normalized_margin")


def label_quality_scores(
    pred_probs: np.ndarray, labels: Sequence[int] | np.ndarray, method: str = "self_confidence"
) -> np.ndarray:
    """One score per row of the (N, K) ``pred_probs`` for the given label indices."""
    probs = np.asarray(pred_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or y.shape != (probs.shape[0],):
        raise ValueError(f"pred_probs must be N x K and labels N long; got {probs.shape} and {y.shape}")
    given = probs[np.arange(len(y)), y]
    if method == "self_confidence":
        return given
    if method == "normalized_margin":
        others = probs.copy()
        others[np.arange(len(y)), y] = -np.inf
        best_other = others.max(axis=1) if probs.shape[1] > 1 else np.zeros(len(y))
        return (given - best_other + 1.0) / 2.0
    raise ValueError(f"unknown method {method}; one of {', '.join(METHODS)}")


def row_quality(probs: Sequence[float], label: int, method: str = "self_confidence") -> float:
    """The score of one item (``probs`` over all K classes, ``label`` an index)."""
    return float(label_quality_scores(np.asarray([probs]), [label], method)[0])
