"""Prompt alignment: the learnable prompt aligned with the handcrafted prompt's posterior.

Two rules live here (docs/method.md, "Alignment modes").

The paper's (``alignment.mode = "paper"``; Zhang et al., DASFAA 2025, official code
zhangzf01/CoOpPLL ``trainers/base_trainer/palace.py`` lines 78-104): the PLL objective runs
unchanged, and one term is added,

    t = softmax(z^H) * s / sum(softmax(z^H) * s)          (the handcrafted posterior within S)
    L_align = CE(p^L, t) = -mean_i sum_k t_ik log p^L_ik
    loss = L_pll + lambda * L_align,   lambda = c * L_pll.detach() / L_align.detach()

with c = 1 in the paper. Candor's auto trust sets c to the label-free trust cap of the prior
(app/ml/trust.py), so a prior no better than guessing adds nothing.

Candor's mixed target (modes "target", "extra_loss", "both"):

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
from app.ml.objectives import restrict, restrict_logits, soft_cross_entropy


def paper_alignment(
    pll_loss: torch.Tensor,
    logits: torch.Tensor,
    prior_logits: torch.Tensor,
    mask: torch.Tensor,
    trust: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's loss ``L_pll + lambda * L_align`` and its adaptive weight ``lambda``.

    ``lambda = trust * L_pll / L_align`` (both detached) gives the two terms equal size at every
    batch; ``trust`` = 1 is the paper's rule, Candor's auto trust passes the prior's trust cap.
    ``L_align`` = 0 (the learnable prompt already puts all its mass on a one-hot target, where the
    paper's ratio divides by zero) gets weight 0: that term has no gradient there anyway.
    """
    target = restrict_logits(prior_logits.detach(), mask).to(logits.dtype)
    align = soft_cross_entropy(logits, target)
    a, p = align.detach(), pll_loss.detach()
    lam = torch.where(a > 0, trust * p / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(a))
    return pll_loss + lam * align, lam


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
