"""Prompt alignment: the mixed class posterior of the learnable and the handcrafted prompt.

m_k(x) = s_k [a p^L_k + (1-a) p^H_k] / sum_j s_j [a p^L_j + (1-a) p^H_j]      (space = "prob")
m_k(x) = s_k softmax(a z^L + (1-a) z^H)_k / sum_j s_j softmax(...)_j            (space = "logit")

with p = softmax(z / T), ``a`` the learnable prompt's weight from the schedule, the handcrafted
weight 1 - a capped by ``prior_weight_max``. The target carries no gradient, is zero outside the
candidates and sums to one inside them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from app.ml.config import MixConfig
from app.ml.objectives import restrict


def learnable_weight(cfg: MixConfig, progress: float) -> float:
    """alpha at training progress in [0, 1] (0 = first step, 1 = last step)."""
    t = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        frac = 0.0
    elif cfg.schedule == "linear":
        frac = t
    else:  # cosine: slow start, slow finish
        frac = 0.5 * (1.0 - math.cos(math.pi * t))
    alpha = cfg.alpha_start + (cfg.alpha_end - cfg.alpha_start) * frac
    return max(alpha, 1.0 - cfg.prior_weight_max)


@torch.no_grad()
def mixed_posterior(
    logits_learned: torch.Tensor,
    logits_prior: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    space: str = "prob",
    temperature: float = 1.0,
) -> torch.Tensor:
    """The alignment target m (B, K): restricted to the candidates, renormalised, no gradient.

    Raises ValueError when a row has no candidate.
    """
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("a candidate mask row is empty: every item needs at least one candidate")
    zl = logits_learned.detach().double() / temperature
    zh = logits_prior.detach().double() / temperature
    if space == "prob":
        mix = alpha * F.softmax(zl, dim=1) + (1.0 - alpha) * F.softmax(zh, dim=1)
    elif space == "logit":
        mix = F.softmax(alpha * zl + (1.0 - alpha) * zh, dim=1)
    else:
        raise ValueError(f"unknown mixing space {space!r}")
    return restrict(mix, mask.double()).to(logits_learned.dtype)
