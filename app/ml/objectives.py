"""Partial-label (PLL) objectives with one uniform interface.

Notation (method.md §4): ``z`` logits (B, K), ``p = softmax(z)``, ``s`` candidate mask (B, K) in
{0, 1}, ``w`` per-item confidences (N, K) indexed by a stable item index. Confidences are state
owned by the trainer (saved with every checkpoint); an objective only says how to initialise them,
how to turn them into a loss and how to update them after each optimizer step.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from app.ml.config import ObjectiveConfig
from app.ml.objective_registry import OBJECTIVES, SPECS_BY_NAME, ObjectiveSpec


def require_candidates(mask: torch.Tensor) -> None:
    empty = (mask <= 0).all(dim=1)
    if bool(empty.any()):
        raise ValueError(
            f"candidate mask row {int(empty.nonzero()[0])} is empty: every item needs at least one candidate"
        )


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax of ``scores`` over the entries where ``mask`` > 0, exactly zero elsewhere.

    Computed in log space: every entry outside the mask is set to -inf and the row's logsumexp over
    the mask is subtracted (in float64, returned in the dtype of ``scores``), so a row sums to one
    to rounding for any gap between its scores; no division by a clamped total. ``scores`` may be
    logits or log-probabilities (both give the same result).

    Defined edge cases: a row whose mask is empty comes out all zeros (LWS's non-candidate part of
    an item whose set holds every class); a row whose masked scores are all -inf (probabilities
    that underflowed to exactly zero) comes out uniform over its mask.
    """
    keep = mask > 0
    z = scores.detach().double().masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    finite = torch.isfinite(lse)
    out = torch.exp(z - torch.where(finite, lse, torch.zeros_like(lse)))
    uniform = keep.double() / keep.sum(dim=1, keepdim=True).clamp_min(1)
    out = torch.where(finite, out, uniform)
    return out.to(scores.dtype if scores.is_floating_point() else torch.float32)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Non-negative rows scaled to sum to one (in log space); an all-zero row stays zero."""
    return masked_softmax(x.double().log(), x > 0).to(x.dtype if x.is_floating_point() else torch.float32)


def restrict_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The posterior softmax(logits) restricted to the candidates and renormalised inside them.

    Exact for any logit gap (see :func:`masked_softmax`). A row with no candidate raises
    ValueError naming the row: every item needs at least one candidate.
    """
    require_candidates(mask)
    return masked_softmax(logits, mask)


def restrict(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probabilities ``p`` restricted to the candidates and renormalised inside them.

    Normalised in log space (log p, logsumexp over the candidates), so a row sums to one however
    small its candidate mass, as long as it is not exactly zero; a row whose candidates all have
    probability exactly zero (float underflow) falls back to uniform over its candidates. Pass
    logits to :func:`restrict_logits` where they exist: they never underflow. A row with no
    candidate raises ValueError naming the row.
    """
    require_candidates(mask)
    return masked_softmax(p.double().log(), mask).to(p.dtype)


def log_mix(log_p: torch.Tensor, log_q: torch.Tensor, weight: float) -> torch.Tensor:
    """log((1 - weight) p + weight q) from log p and log q (logaddexp: exact where p or q underflow)."""
    if weight <= 0:
        return log_p
    if weight >= 1:
        return log_q
    return torch.logaddexp(log_p + math.log1p(-weight), log_q + math.log(weight))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class Objective:
    """Base class. Subclasses override what differs; the defaults are PRODEN's.

    ``spec`` is the objective's registry entry (app/ml/objective_registry.py); it says whether the
    objective keeps confidences and whether the trainer updates them from the outputs computed
    before the optimizer step (PRODEN, POP: their references reuse the step's own forward pass) or
    from the batch run again after the step (RC, LWS, LWC, CAVL: their references do that).
    """

    spec: ClassVar[ObjectiveSpec]

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg
        self.state: dict[str, torch.Tensor] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def keeps_confidence(self) -> bool:
        return self.spec.update != "none"

    @property
    def update_after_step(self) -> bool:
        """True when the confidence update wants the batch's outputs after the optimizer step."""
        return self.spec.update == "after_step"

    def init_confidence(self, mask: torch.Tensor) -> torch.Tensor:
        return normalize_rows(mask.float())

    def loss(self, logits: torch.Tensor, mask: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, w)

    def confidence_from(self, logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """New confidences for a batch, from the logits or, with alignment, from its target.

        ``target`` is the mixed posterior restricted to the candidates (or None without alignment).
        """
        if target is not None:
            return target
        return restrict_logits(logits, mask)

    @torch.no_grad()
    def update(
        self,
        w: torch.Tensor,
        idx: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> None:
        """No-grad confidence update for the batch ``idx``, called right after the optimizer step
        with the logits :attr:`update_after_step` asks for."""
        if self.keeps_confidence:
            w[idx] = self.confidence_from(logits.detach(), mask, target).to(w.dtype)

    def on_epoch_end(self, epoch: int, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hook at the end of each epoch (0-based ``epoch``); may return a new candidate mask (POP)."""
        return mask

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = dict(state)


_IMPLEMENTATIONS: dict[str, type[Objective]] = {}


def _implements(name: str):
    """Class decorator: the implementation of registry entry ``name`` (KeyError if there is none)."""
    spec = SPECS_BY_NAME[name]

    def register(cls: type[Objective]) -> type[Objective]:
        cls.spec = spec
        _IMPLEMENTATIONS[name] = cls
        return cls

    return register


def cc_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CC (Feng et al. 2020): -log sum_{k in S} p_k, computed stably with logsumexp."""
    masked = logits.masked_fill(mask <= 0, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)).mean()


@_implements("naive")
class Naive(Objective):
    """NAIVE: RC frozen at its initialisation (-sum (s/|S|) log p), or plain CC."""

    def loss(self, logits, mask, w):
        if self.cfg.naive.variant == "cc":
            return cc_loss(logits, mask)
        return soft_cross_entropy(logits, normalize_rows(mask.float()).to(logits.dtype))


@_implements("cc")
class CC(Objective):
    def loss(self, logits, mask, w):
        return cc_loss(logits, mask)


@_implements("rc")
class RC(Objective):
    """RC (Feng et al. 2020): -sum w log p; after every optimizer step the batch is run again and
    w <- s*p / sum(s*p) from those outputs."""


@_implements("proden")
class PRODEN(Objective):
    """PRODEN (Lv et al. 2020): RC's loss and rule, applied to the step's own outputs (before the
    optimizer step). A candidate whose confidence underflows to zero stays a candidate."""


class _LeveragedWeighted(Objective):
    """Wen et al. 2021: w starts at 1/K over all classes; w <- normalize(s*p) + normalize((1-s)*p)
    from the batch run again after the step. The loss is averaged over the batch."""

    beta: float

    def init_confidence(self, mask):
        k = mask.shape[1]
        return torch.full(mask.shape, 1.0 / k, dtype=torch.float32)

    def terms(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class losses for a candidate and for a non-candidate."""
        raise NotImplementedError

    def loss(self, logits, mask, w):
        s = mask.to(logits.dtype)
        pos_term, neg_term = self.terms(logits)
        pos = (w * s * pos_term).sum(dim=1)
        neg = (w * (1 - s) * neg_term).sum(dim=1)
        return (pos + self.beta * neg).mean()

    def confidence_from(self, logits, mask, target):
        inside = target if target is not None else restrict_logits(logits, mask)
        return inside + masked_softmax(logits, 1 - mask).to(inside.dtype)


@_implements("lws")
class LWS(_LeveragedWeighted):
    """LWS as in the paper: psi(z_k) for a candidate, psi(-z_k) for a non-candidate, psi(u) = 1/(1+e^u).

    At CLIP's logit scale (100 x cosine, logits of 20-100) psi saturates and its gradient all but
    vanishes; LWC is the form that learns there.
    """

    @property
    def beta(self) -> float:
        return self.cfg.lws.beta

    def terms(self, logits):
        return torch.sigmoid(-logits), torch.sigmoid(logits)


@_implements("lwc")
class LWC(_LeveragedWeighted):
    """LWC, the cross-entropy form of the leveraged weighted loss: -log p_k for a candidate and
    -log(1 - p_k) for a non-candidate (p_k capped at 1 - 1e-6 there)."""

    @property
    def beta(self) -> float:
        return self.cfg.lwc.beta

    def terms(self, logits):
        log_p = F.log_softmax(logits, dim=1)
        return -log_p, -torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))


@_implements("cavl")
class CAVL(Objective):
    """CAVL (Zhang et al. 2022): w <- onehot(argmax_{k in S} z_k |1 - z_k|) on the raw logits of
    the batch run again after the step.

    The argmax is taken among the candidates only (masked to -inf). The reference multiplies the
    score by the mask instead, so when every candidate scores below zero it picks a non-candidate;
    Candor never does. With CLIP-scale logits (logit_scale x cosine, mostly > 1) z|1-z| is
    increasing in z, so the choice is the top candidate logit. With alignment the one-hot goes to
    the argmax of the mixed target instead.
    """

    def confidence_from(self, logits, mask, target):
        if target is not None:
            score = target.masked_fill(mask <= 0, float("-inf"))
        else:
            score = (logits * (1 - logits).abs()).masked_fill(mask <= 0, float("-inf"))
        return F.one_hot(score.argmax(dim=1), num_classes=logits.shape[1]).float()


@_implements("pop")
class POP(Objective):
    """POP (Xu et al. 2023): PRODEN updates plus progressive purification of the candidate sets.

    At each epoch end the confidences are pushed into a window of the last ``pop.window`` epochs.
    At the end of 0-based epoch ``pop.warmup`` and every ``pop.interval`` epochs after it, a
    candidate k of item i is dropped when mean_k / max_j mean_j < theta (the item's best candidate
    always stays), and w <- normalize(mean * purified s). When fewer than 0.01% of the mask entries
    changed, theta <- theta (1 + growth), as long as theta < ``pop.theta_max``.
    """

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg)
        self.state = {"theta": torch.tensor(cfg.pop.theta, dtype=torch.float64)}

    def purifies_after(self, epoch: int) -> bool:
        """Whether the end of 0-based ``epoch`` purifies."""
        p = self.cfg.pop
        return epoch >= p.warmup and (epoch - p.warmup) % p.interval == 0

    def on_epoch_end(self, epoch, w, mask):
        p = self.cfg.pop
        window = self.state.get("window")
        snap = w.detach().clone().unsqueeze(0)
        window = snap if window is None else torch.cat([window, snap])[-p.window :]
        self.state["window"] = window
        if not self.purifies_after(epoch):
            return mask
        mean = window.double().mean(dim=0)
        theta = float(self.state["theta"])
        best = mean.max(dim=1, keepdim=True).values
        ratio = torch.where(best > 0, mean / torch.where(best > 0, best, torch.ones_like(best)), torch.zeros_like(mean))
        keep = (ratio >= theta).to(mask.dtype) * mask
        keep[torch.arange(mask.shape[0]), (mean * mask).argmax(dim=1)] = 1.0
        changed = int((keep != mask).sum())
        if changed < 1e-4 * mask.numel() and theta < p.theta_max:
            self.state["theta"] = torch.tensor(theta * (1 + p.theta_growth), dtype=torch.float64)
        w.copy_(restrict(mean, keep).to(w.dtype))
        return keep


_missing = [name for name in OBJECTIVES if name not in _IMPLEMENTATIONS]
if _missing:  # pragma: no cover - a registry entry without an implementation is a programming error
    raise ImportError(f"objectives without an implementation: {', '.join(_missing)}")


def build_objective(cfg: ObjectiveConfig) -> Objective:
    return _IMPLEMENTATIONS[cfg.name](cfg)
