"""How far to trust a posterior, judged from the candidate sets alone (no true labels).

The estimator. Let a model's top-1 choice over all K classes be correct with probability a. A
correct choice always lies in the item's candidate set S (the true label is in S). A wrong choice
lies in S only when that wrong label was drawn into S, which under the benchmark protocol happens
with probability c = (|S| - 1) / (K - 1) on average. So the hit rate h = P(top-1 in S) satisfies

    h = a + (1 - a) c        =>        a = (h - c) / (1 - c).

Both h and c are observable, so a, the model's accuracy, can be estimated without any label. The
estimate is unbiased when wrong labels join the sets independently of the model's mistakes; with
sets built from annotators who confuse the same classes the model confuses, it is optimistic.

Candor uses it twice: before training, on the zero-shot prior (how much weight the handcrafted
prompt may get in the alignment target); after training, on held-out items the prompt never
trained on, to choose between the learned prompt, the prior and their mixture for prediction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class AccuracyEstimate:
    hit_rate: float  # share of items whose top-1 class over all K lies in the candidate set
    chance: float  # share a wrong top-1 would get: mean (|S| - 1) / (K - 1)
    accuracy: float  # (hit_rate - chance) / (1 - chance), clipped to [0, 1]
    stderr: float  # binomial standard error of that estimate
    n: int

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def estimate_accuracy(posterior: torch.Tensor, mask: torch.Tensor) -> AccuracyEstimate:
    """Label-free estimate of the top-1 accuracy of ``posterior`` (N, K) from candidate masks."""
    n, k = mask.shape
    if n == 0:
        return AccuracyEstimate(0.0, 0.0, 0.0, 1.0, 0)
    top = posterior.argmax(dim=1)
    hits = mask[torch.arange(n), top].double()
    h = float(hits.mean())
    c = float(((mask.sum(dim=1).double() - 1) / max(k - 1, 1)).mean())
    if c >= 1.0:  # every set holds every class: the sets say nothing
        return AccuracyEstimate(h, c, 0.0, 1.0, n)
    acc = (h - c) / (1 - c)
    se = math.sqrt(max(h * (1 - h), 1e-12) / n) / (1 - c)
    return AccuracyEstimate(h, c, min(max(acc, 0.0), 1.0), se, n)


@dataclass(frozen=True)
class PriorTrust:
    estimate: AccuracyEstimate
    weight: float  # the cap on the prior's weight in the alignment target, in [0, 1]

    def to_dict(self) -> dict:
        return {"prior": self.estimate.to_dict(), "prior_weight_max": round(self.weight, 4)}


def prior_trust(prior_posterior: torch.Tensor, mask: torch.Tensor, z: float = 2.0, power: float = 1.0) -> PriorTrust:
    """The prior's weight cap: its estimated accuracy's excess over guessing (1/K), scaled to
    [0, 1] and raised to ``power`` (above 1, weak priors lose weight faster); zero unless that
    excess is at least ``z`` standard errors."""
    k = mask.shape[1]
    est = estimate_accuracy(prior_posterior, mask)
    excess = est.accuracy - 1.0 / k
    if excess <= z * est.stderr:
        return PriorTrust(est, 0.0)
    return PriorTrust(est, min(max(excess / (1.0 - 1.0 / k), 0.0), 1.0) ** power)


def holdout_split(n: int, fraction: float, seed: int, minimum: int = 100) -> torch.Tensor:
    """A boolean mask of held-out items (none when the dataset is too small to spare them)."""
    size = round(n * fraction)
    held = torch.zeros(n, dtype=torch.bool)
    if fraction <= 0 or size < minimum or n - size < minimum:
        return held
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    held[perm[:size]] = True
    return held
