"""Annotators' votes as evidence: an EM loop over per-annotator confusions and an item model.

Given the items' votes (annotator j said label l for item i) and the items' cached image features,
:func:`fit_votes` alternates

* **E-step**: the posterior of item i's true class,
  q_i(y) ∝ p_model(y | x_i) · Π_{(j, l) voting on i} π_j[y, l]
  (one-hot on the label of a ground-truth annotation);
* **M-step, annotators**: each annotator's confusion matrix π_j[y, l] = P(says l | true y) from the
  soft counts C_j[y, l] = Σ_i q_i(y)·[j said l on i], smoothed toward a *group-aware one-coin prior*
  P_j[y, l] = a_j on the diagonal and (1 - a_j)·E[y, l] off it, where a_j is the annotator's
  overall accuracy and E[y, ·] the errors of *all* annotators on class y (which carries the
  confusable groups: a coat is mistaken for a pullover, not for a sandal). With 20 annotators × 10
  classes a full confusion matrix per annotator has 90 free parameters and ~150 votes per row at
  best; the prior lends each row ``smoothing`` pseudo-votes of that shape;
* **M-step, model** (``model = "adapter"``): a linear softmax head on the cached image features
  (the residual adapter of CLIP-Adapter without a backbone to adapt) fitted to q by L2-regularised
  soft cross-entropy, **out of fold**: item i's p_model comes from a head that never saw item i's
  votes, so the votes are not counted twice. The held-out logits are then scaled by the factor
  (0-1.5) that best predicts q (:func:`calibrate`): an overconfident head on few items is
  flattened, a head on features that carry nothing goes to 0 (plain Dawid-Skene).
  ``model = "none"`` is Dawid-Skene with this smoothing: p_model is the class prior.

The loop starts from the vote shares (majority vote, soft); with the adapter, the first round
estimates the annotators against the head's held-out posterior rather than against their own
votes, so that items with a single vote do not make every annotator look perfect. Pure: torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

EPS = 1e-12


@dataclass
class Votes:
    """Votes as flat arrays: vote v is annotator ``annotator[v]`` saying class ``label[v]`` on item
    ``item[v]``. ``truth[i]`` is the class of a ground-truth annotation on item i, -1 where none."""

    item: torch.Tensor  # (V,) long
    annotator: torch.Tensor  # (V,) long, index into ``annotators``
    label: torch.Tensor  # (V,) long
    annotators: list[str]
    n_items: int
    truth: torch.Tensor | None = None  # (N,) long

    @classmethod
    def from_annotations(cls, annotations: list[list[dict] | None], class_index: dict[str, int]) -> Votes | None:
        """From per-item ``[{annotator, label, ground_truth?}]`` lists (None or [] where an item has
        none); None when no item has a vote (votes are then off)."""
        who: dict[str, int] = {}
        item, ann, lab = [], [], []
        truth = torch.full((len(annotations),), -1, dtype=torch.long)
        for i, votes in enumerate(annotations):
            for a in votes or ():
                k = class_index[a["label"]]
                if a.get("ground_truth"):
                    truth[i] = k
                item.append(i)
                ann.append(who.setdefault(a["annotator"], len(who)))
                lab.append(k)
        if not item:
            return None
        return cls(
            item=torch.tensor(item, dtype=torch.long),
            annotator=torch.tensor(ann, dtype=torch.long),
            label=torch.tensor(lab, dtype=torch.long),
            annotators=list(who),
            n_items=len(annotations),
            truth=truth if bool((truth >= 0).any()) else None,
        )

    def subset(self, items: torch.Tensor) -> Votes | None:
        """The votes on ``items`` (indices, in their order), renumbered 0..len(items)-1; the
        annotators keep their names. None when none of those items has a vote."""
        new = torch.full((self.n_items,), -1, dtype=torch.long)
        new[items] = torch.arange(items.numel())
        keep = new[self.item] >= 0
        if not bool(keep.any()):
            return None
        used = torch.unique(self.annotator[keep])
        renum = torch.full((len(self.annotators),), -1, dtype=torch.long)
        renum[used] = torch.arange(used.numel())
        truth = None if self.truth is None else self.truth[items]
        return Votes(
            item=new[self.item[keep]],
            annotator=renum[self.annotator[keep]],
            label=self.label[keep],
            annotators=[self.annotators[j] for j in used.tolist()],
            n_items=int(items.numel()),
            truth=truth if truth is not None and bool((truth >= 0).any()) else None,
        )

    def has_votes(self) -> torch.Tensor:
        """(N,) bool: items with at least one vote."""
        out = torch.zeros(self.n_items, dtype=torch.bool)
        out[self.item] = True
        return out


@dataclass
class AnnotatorStats:
    annotator: str
    items: int
    accuracy: float  # expected share of this annotator's labels that are the true class
    confusion: list[list[float]]  # [true class][given label], rows sum to one

    def to_dict(self, classes: list[str]) -> dict:
        return {
            "annotator": self.annotator,
            "items": self.items,
            "accuracy": self.accuracy,
            "confusion": {
                classes[y]: {classes[k]: v for k, v in enumerate(row) if v >= 0.0005}
                for y, row in enumerate(self.confusion)
            },
        }


@dataclass
class VotesResult:
    posterior: torch.Tensor  # (N, K) q: posterior of the true class given votes and features
    model_posterior: torch.Tensor  # (N, K) the item model's (out-of-fold) posterior at the last round
    confusion: torch.Tensor  # (J, K, K) per-annotator confusion
    annotators: list[AnnotatorStats]
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "annotators": len(self.annotators),
            "rounds": len(self.history),
            "mean_annotator_accuracy": round(
                sum(a.accuracy for a in self.annotators) / max(len(self.annotators), 1), 4
            ),
            "history": self.history,
        }


def vote_shares(votes: Votes, k: int) -> torch.Tensor:
    """(N, K) each item's share of votes per class (uniform where an item has none); a ground-truth
    label is one-hot."""
    counts = torch.zeros(votes.n_items, k, dtype=torch.float64)
    counts.index_put_((votes.item, votes.label), torch.ones(votes.item.numel(), dtype=torch.float64), accumulate=True)
    empty = counts.sum(dim=1) == 0
    counts[empty] = 1.0
    q = counts / counts.sum(dim=1, keepdim=True)
    return _clamp_truth(q, votes)


def _clamp_truth(q: torch.Tensor, votes: Votes) -> torch.Tensor:
    if votes.truth is None:
        return q
    known = votes.truth >= 0
    q = q.clone()
    q[known] = F.one_hot(votes.truth[known], q.shape[1]).to(q.dtype)
    return q


def estimate_confusions(q: torch.Tensor, votes: Votes, smoothing: float) -> torch.Tensor:
    """(J, K, K) confusions from the soft counts, shrunk toward the group-aware one-coin prior."""
    k = q.shape[1]
    n_ann = len(votes.annotators)
    counts = torch.zeros(n_ann, k, k, dtype=torch.float64)
    # counts[j, :, l] += q[i] for each vote (i, j, l)
    flat = torch.zeros(n_ann * k, k, dtype=torch.float64)
    flat.index_add_(0, votes.annotator * k + votes.label, q[votes.item])
    counts = flat.view(n_ann, k, k).transpose(1, 2)  # [j, y, l]
    eye = torch.eye(k, dtype=torch.float64)
    errors = (counts.sum(dim=0) * (1 - eye)) + 1e-3 * (1 - eye)  # pooled errors per true class
    errors = errors / errors.sum(dim=1, keepdim=True)
    right = (counts * eye).sum(dim=(1, 2))
    total = counts.sum(dim=(1, 2))
    acc = (right + 1.0) / (total + 2.0)  # Beta(1, 1)
    prior = acc.view(-1, 1, 1) * eye + (1 - acc).view(-1, 1, 1) * errors.unsqueeze(0)
    smoothed = counts + smoothing * prior
    return smoothed / smoothed.sum(dim=2, keepdim=True)


def vote_loglik(confusion: torch.Tensor, votes: Votes) -> torch.Tensor:
    """(N, K) Σ over each item's votes of log π_j[y, l]."""
    k = confusion.shape[1]
    logc = confusion.clamp_min(EPS).log()  # [j, y, l]
    per_vote = logc[votes.annotator, :, votes.label]  # (V, K)
    out = torch.zeros(votes.n_items, k, dtype=torch.float64)
    out.index_add_(0, votes.item, per_vote)
    return out


def fit_head(
    x: torch.Tensor, target: torch.Tensor, l2: float, steps: int, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear softmax head (W, b) fitted to soft targets by L2-regularised cross-entropy (L-BFGS)."""
    d, k = x.shape[1], target.shape[1]
    w = torch.zeros(d, k, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(k, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")
    n = x.shape[0]
    wt = torch.ones(n, dtype=x.dtype) if weight is None else weight.to(x.dtype)
    norm = float(wt.sum())

    def closure():
        opt.zero_grad()
        logp = F.log_softmax(x @ w + b, dim=1)
        loss = -(wt * (target * logp).sum(dim=1)).sum() / norm + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def out_of_fold(
    x: torch.Tensor, target: torch.Tensor, folds: int, l2: float, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """(N, K) logits of each item from a head fitted on the other folds."""
    n = x.shape[0]
    fold = torch.randperm(n, generator=generator) % folds
    out = torch.zeros(n, target.shape[1], dtype=x.dtype)
    for f in range(folds):
        held = fold == f
        if bool(held.all()) or not bool(held.any()):
            continue
        w, b = fit_head(x[~held], target[~held], l2, steps)
        out[held] = x[held] @ w + b
    return out


TEMPERATURES = tuple(t / 20 for t in range(0, 31))  # 0, 0.05, ..., 1.5


def calibrate(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The out-of-fold logits scaled by the factor in :data:`TEMPERATURES` under which they best
    predict the current posterior (expected log-likelihood), as log-probabilities. A head that
    overfits (few items, features that do not carry the class) is flattened, down to no
    information at all (0) where its held-out guesses are no better than uniform."""
    best, best_tau = None, 0.0
    for tau in TEMPERATURES:
        ll = float((target * F.log_softmax(tau * logits, dim=1)).sum())
        if best is None or ll > best + 1e-9:
            best, best_tau = ll, tau
    return F.log_softmax(best_tau * logits, dim=1), best_tau


def fit_votes(
    features: torch.Tensor,
    votes: Votes,
    k: int,
    *,
    model: str = "adapter",
    rounds: int = 5,
    smoothing: float = 10.0,
    folds: int = 5,
    l2: float = 1e-4,
    steps: int = 100,
    candidates: torch.Tensor | None = None,
    seed: int = 0,
) -> VotesResult:
    """The EM loop of the module docstring. ``candidates`` (N, K), where given, restricts items
    without any vote to their candidate set (items with votes may land anywhere: a single wrong
    vote must be overrulable)."""
    gen = torch.Generator().manual_seed(seed % (2**63))
    x = features.double()
    if model == "adapter":
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        x = (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-6)
        x[:, -1] = 1.0
    voted = votes.has_votes()
    q = vote_shares(votes, k)
    if candidates is not None:
        c = candidates.double()
        q[~voted] = c[~voted] / c[~voted].sum(dim=1, keepdim=True)
    model_logp = torch.full_like(q, -math.log(k))
    history = []
    for r in range(rounds):
        tau = None
        if model == "adapter":
            model_logp, tau = calibrate(out_of_fold(x, q, folds, l2, steps, gen), q)
        else:
            model_logp = q.mean(dim=0).clamp_min(EPS).log().expand_as(q).clone()
        # The first round judges the annotators against the model's held-out view, not against
        # their own votes (which would make every lone vote look right).
        confusion = estimate_confusions(q if r or model != "adapter" else _clamp_truth(model_logp.exp(), votes),
                                        votes, smoothing)  # fmt: skip
        logq = model_logp + vote_loglik(confusion, votes)
        if candidates is not None:
            logq[~voted] = logq[~voted].masked_fill(candidates[~voted] <= 0, float("-inf"))
        new_q = _clamp_truth(torch.softmax(logq, dim=1), votes)
        change = float((new_q.argmax(dim=1) != q.argmax(dim=1)).double().mean())
        q = new_q
        history.append({"round": r + 1, "changed": round(change, 5)} | ({} if tau is None else {"model_scale": tau}))
    confusion = estimate_confusions(q, votes, smoothing)
    stats = annotator_stats(q, confusion, votes)
    return VotesResult(
        posterior=q, model_posterior=model_logp.exp(), confusion=confusion, annotators=stats, history=history
    )


def annotator_stats(q: torch.Tensor, confusion: torch.Tensor, votes: Votes) -> list[AnnotatorStats]:
    """Per annotator: items voted on, expected accuracy (mean over their votes of q_i(their label))
    and the confusion matrix."""
    n_ann = len(votes.annotators)
    hit = q[votes.item, votes.label]
    sums = torch.zeros(n_ann, dtype=torch.float64).index_add_(0, votes.annotator, hit)
    counts = torch.zeros(n_ann, dtype=torch.float64).index_add_(
        0, votes.annotator, torch.ones_like(hit, dtype=torch.float64)
    )
    return [
        AnnotatorStats(
            annotator=name,
            items=int(counts[j]),
            accuracy=round(float(sums[j] / counts[j].clamp_min(1)), 4),
            confusion=[[round(float(v), 4) for v in row] for row in confusion[j]],
        )
        for j, name in enumerate(votes.annotators)
    ]
