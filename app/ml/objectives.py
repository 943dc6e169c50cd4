"""Partial-label (PLL) objectives with one uniform interface.

Notation (method.md §4): ``z`` logits (B, K), ``p = softmax(z)``, ``s`` candidate mask (B, K) in
{0, 1}, ``w`` per-item confidences (N, K) indexed by a stable item index. Confidences are state
owned by the trainer (saved with every checkpoint); an objective only says how to initialise them,
how to turn them into a loss and how to update them after each optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from app.ml.config import ObjectiveConfig

EPS = 1e-12


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to sum to one; an all-zero row stays zero."""
    total = x.sum(dim=1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(EPS), torch.zeros_like(x))


def restrict(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``p`` restricted to the candidates and renormalised inside them.

    A row whose candidates all got zero probability (float underflow) falls back to uniform over
    its candidates; a row with no candidate at all is an error.
    """
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("a candidate mask row is empty: every item needs at least one candidate")
    masked = p * mask
    total = masked.sum(dim=1, keepdim=True)
    uniform = mask / mask.sum(dim=1, keepdim=True)
    return torch.where(total > 0, masked / total.clamp_min(EPS), uniform)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k log softmax(logits)_k."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@dataclass
class Objective:
    """Base class. Subclasses override what differs; the defaults are PRODEN's."""

    cfg: ObjectiveConfig
    name: str = "base"
    keeps_confidence: bool = True
    state: dict = field(default_factory=dict)

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
        return restrict(F.softmax(logits, dim=1), mask)

    @torch.no_grad()
    def update(
        self,
        w: torch.Tensor,
        idx: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> None:
        """No-grad confidence update for the batch ``idx``, right after the optimizer step."""
        if self.keeps_confidence:
            w[idx] = self.confidence_from(logits.detach(), mask, target).to(w.dtype)

    def on_epoch_end(self, epoch: int, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hook at the end of each epoch; may return a new candidate mask (POP)."""
        return mask

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = dict(state)


class Naive(Objective):
    """NAIVE: RC frozen at its initialisation (-sum (s/|S|) log p), or plain CC."""

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="naive", keeps_confidence=False)

    def loss(self, logits, mask, w):
        if self.cfg.naive_variant == "cc":
            return cc_loss(logits, mask)
        return soft_cross_entropy(logits, normalize_rows(mask.float()))


def cc_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CC (Feng et al. 2020): -log sum_{k in S} p_k, computed stably with logsumexp."""
    masked = logits.masked_fill(mask <= 0, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)).mean()


class CC(Objective):
    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="cc", keeps_confidence=False)

    def loss(self, logits, mask, w):
        return cc_loss(logits, mask)


class RC(Objective):
    """RC (Feng et al. 2020): -sum w log p; w <- s*p / sum(s*p) after every step."""

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="rc")


class PRODEN(Objective):
    """PRODEN (Lv et al. 2020): the same loss and update as RC."""

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="proden")


class LWS(Objective):
    """LWS (Wen et al. 2021).

    ``lws_loss="sigmoid"``: loss = sum_k w_k s_k psi(z_k) + beta sum_k w_k (1 - s_k) psi(-z_k) with
    psi(u) = 1 / (1 + e^u), as in the paper. At CLIP's logit scale (100 x cosine, logits of 20-100)
    psi saturates and the gradient vanishes, so the default ``"log"`` uses -log p_k and
    -log(1 - p_k) on the softmax in place of psi(z_k) and psi(-z_k), as prompt-learning code for
    CLIP does. Averaged over the batch; w starts at 1/K over all classes;
    w <- normalize(s*p) + normalize((1-s)*p).
    """

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="lws")

    def init_confidence(self, mask):
        k = mask.shape[1]
        return torch.full(mask.shape, 1.0 / k, dtype=torch.float32)

    def loss(self, logits, mask, w):
        s = mask.float()
        if self.cfg.lws_loss == "sigmoid":
            pos_term, neg_term = torch.sigmoid(-logits), torch.sigmoid(logits)
        else:
            log_p = F.log_softmax(logits, dim=1)
            pos_term = -log_p
            neg_term = -torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))
        pos = (w * s * pos_term).sum(dim=1)
        neg = (w * (1 - s) * neg_term).sum(dim=1)
        return (pos + self.cfg.lws_weight * neg).mean()

    def confidence_from(self, logits, mask, target):
        p = F.softmax(logits, dim=1)
        s = mask.float()
        inside = target if target is not None else normalize_rows(p * s)
        return inside + normalize_rows(p * (1 - s))


class CAVL(Objective):
    """CAVL (Zhang et al. 2022): w <- onehot(argmax_{k in S} z_k |1 - z_k|) on the raw logits.

    With CLIP-scale logits (logit_scale x cosine, mostly > 1) z|1-z| is increasing in z, so the
    choice is the top candidate logit; below 1 the score follows CAVL's definition literally.
    With alignment the one-hot goes to the argmax of the mixed target instead.
    """

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="cavl")

    def confidence_from(self, logits, mask, target):
        if target is not None:
            score = target.masked_fill(mask <= 0, float("-inf"))
        else:
            score = (logits * (1 - logits).abs()).masked_fill(mask <= 0, float("-inf"))
        return F.one_hot(score.argmax(dim=1), num_classes=logits.shape[1]).float()


class POP(Objective):
    """POP (Xu et al. 2023): PRODEN updates plus progressive purification of the candidate sets.

    At each epoch end the confidences are pushed into a window of ``pop_window`` epochs. After
    ``pop_warmup`` epochs, a candidate k of item i is dropped when mean_k / max_j mean_j < theta
    (the item's best candidate always stays), and w <- normalize(mean * purified s). When fewer
    than 0.01% of the mask entries change, theta <- theta (1 + growth), up to ``pop_theta_max``.
    """

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg, name="pop")
        self.state = {"theta": torch.tensor(cfg.pop_theta, dtype=torch.float64)}

    def on_epoch_end(self, epoch, w, mask):
        window = self.state.get("window")
        snap = w.detach().clone().unsqueeze(0)
        window = snap if window is None else torch.cat([window, snap])[-self.cfg.pop_window :]
        self.state["window"] = window
        if epoch + 1 < self.cfg.pop_warmup:
            return mask
        mean = window.mean(dim=0)
        theta = float(self.state["theta"])
        best = mean.max(dim=1, keepdim=True).values.clamp_min(EPS)
        keep = (mean / best >= theta).float() * mask
        keep[torch.arange(mask.shape[0]), (mean * mask).argmax(dim=1)] = 1.0
        changed = int((keep != mask).sum())
        if changed < 1e-4 * mask.numel() and theta < self.cfg.pop_theta_max:
            self.state["theta"] = torch.tensor(theta * (1 + self.cfg.pop_theta_growth), dtype=torch.float64)
        w.copy_(restrict(mean, keep))
        return keep


_REGISTRY: dict[str, type[Objective]] = {
    "naive": Naive,
    "cc": CC,
    "rc": RC,
    "proden": PRODEN,
    "lws": LWS,
    "cavl": CAVL,
    "pop": POP,
}


def build_objective(cfg: ObjectiveConfig) -> Objective:
    return _REGISTRY[cfg.name](cfg)
