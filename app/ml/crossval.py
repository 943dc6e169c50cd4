"""Out-of-sample pred_probs by k-fold cross-validation (``cross_validation.folds``).

The items are split into k folds (a permutation seeded by ``train.seed``). For each fold, the
same training a job runs (``app.ml.trainer.train``, same config, on the cached image features)
learns on the other k-1 folds, and its classifier (learned prompt, mixed with the handcrafted
prior at the weight that training chose) gives the held-out items their probabilities over all K
classes. Every item is thus scored by a model that never saw it, which is what
``cleanlab.filter.find_label_issues`` asks of ``pred_probs``. On a job with annotators' votes
(``votes.*``) each fold's training models the annotators from the votes on its own k-1 folds, as
the job does on all items; the held-out items' votes enter nothing that scores them.

Cost: k more trainings, each on (k-1)/k of the items: about k - 1 times the training time of
the job on top of it (5 folds: about 4x more). Featurisation is not repeated: the folds use the
features the job cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from app.ml.backbones import Backbone
from app.ml.config import CleanConfig
from app.ml.crowd import Votes
from app.ml.objectives import log_mix
from app.ml.trainer import Hooks, train


def fold_of(n: int, folds: int, seed: int) -> torch.Tensor:
    """The fold (0..folds-1) of each of ``n`` items: a seeded permutation dealt round-robin, so
    fold sizes differ by one at most."""
    if folds < 2 or n < folds:
        raise ValueError(f"cross_validation.folds = {folds} needs at least {max(folds, 2)} items; the job has {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n, dtype=torch.long)
    out[perm] = torch.arange(n) % folds
    return out


@torch.no_grad()
def held_out_probs(features: torch.Tensor, class_features, prior_features, scale: float, weight: float) -> torch.Tensor:
    """(B, K) probabilities of a trained prompt (mixed with the prior) for unseen features."""
    feats = features.float()
    log_p = F.log_softmax(scale * feats @ class_features.T.float().to(feats.device), dim=1)
    if weight > 0:
        log_q = F.log_softmax(scale * feats @ prior_features.T.float().to(feats.device), dim=1)
        log_p = log_mix(log_p, log_q, weight)
    return log_p.exp().double().cpu()


def out_of_sample(
    backbone: Backbone,
    classes: Sequence[str],
    features: torch.Tensor,
    mask: torch.Tensor,
    cfg: CleanConfig,
    folds: int,
    should_cancel: Callable[[], bool] | None = None,
    on_fold: Callable[[int, int], None] | None = None,
    votes: Votes | None = None,
) -> torch.Tensor:
    """(N, K) out-of-sample probabilities: each row from the training on the other folds (and on
    their votes, when given)."""
    n = features.shape[0]
    fold = fold_of(n, folds, cfg.train.seed)
    out = torch.zeros(n, len(classes), dtype=torch.float64)
    for f in range(folds):
        if on_fold is not None:
            on_fold(f, folds)
        held = (fold == f).nonzero().flatten()
        kept = (fold != f).nonzero().flatten()
        result = train(
            backbone,
            classes,
            features[kept],
            mask[kept],
            cfg,
            hooks=Hooks(should_cancel=should_cancel) if should_cancel else None,
            votes=None if votes is None else votes.subset(kept),
        )
        out[held] = held_out_probs(
            features[held], result.class_features, result.prior_features, result.logit_scale, result.prior_weight
        )
    return out
