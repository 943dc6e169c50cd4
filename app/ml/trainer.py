"""The training loop: CoOp context vectors tuned on cached image features with a PLL objective,
optionally aligned with the handcrafted prompt's posterior.

Only the context is a parameter. A step runs the text tower once over the K prompts at the
truncated length, multiplies by the batch's cached image features, and updates the per-item
confidences (state indexed by a stable item index, saved in every checkpoint). The loop is owned
here, resumable from a :class:`Checkpoint`, cancellable between batches, and deterministic given
``train.seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from app.ml.alignment import learnable_weight, mixed_posterior, paper_alignment
from app.ml.backbones import Backbone, handcrafted_features
from app.ml.config import CleanConfig
from app.ml.crowd import Votes, VotesResult, fit_votes
from app.ml.objectives import build_objective, log_mix, soft_cross_entropy
from app.ml.trust import estimate_accuracy, holdout_split, prior_trust


class Cancelled(Exception):
    """Raised between batches when the caller asked to stop."""


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    seconds: float  # since this run (re)started
    start_epoch: int = 0  # epochs already done when it started (resume)

    @property
    def eta_seconds(self) -> float:
        done = self.epoch * self.steps + self.step
        total = self.epochs * self.steps
        done_here = done - self.start_epoch * self.steps
        return self.seconds / max(done_here, 1) * (total - done)


@dataclass
class Hooks:
    """Callbacks of the loop; all optional."""

    on_step: Callable[[Progress], None] | None = None
    on_epoch_end: Callable[[Checkpoint], None] | None = None
    should_cancel: Callable[[], bool] | None = None


@dataclass
class Checkpoint:
    """Everything needed to continue training after ``epoch`` completed epochs."""

    epoch: int
    ctx: torch.Tensor
    confidence: torch.Tensor
    mask: torch.Tensor
    optimizer: dict
    objective: dict
    rng: torch.Tensor
    history: list[dict] = field(default_factory=list)
    best_ctx: torch.Tensor | None = None
    best: dict = field(default_factory=dict)  # {"epoch", "score"} of best_ctx

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Split into safetensors-able tensors and JSON-able metadata."""
        tensors = {"ctx": self.ctx, "confidence": self.confidence, "mask": self.mask, "rng": self.rng}
        if self.best_ctx is not None:
            tensors["best_ctx"] = self.best_ctx
        for name, value in self.objective.items():
            tensors[f"objective.{name}"] = value
        opt_state = self.optimizer.get("state", {}).get(0, {})
        for name, value in opt_state.items():
            tensors[f"optimizer.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta = {
            "epoch": self.epoch,
            "history": self.history,
            "param_groups": self.optimizer.get("param_groups", []),
            "best": self.best,
        }
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Checkpoint:
        objective = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("objective.")}
        opt = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        return cls(
            epoch=int(meta["epoch"]),
            ctx=tensors["ctx"],
            confidence=tensors["confidence"],
            mask=tensors["mask"],
            optimizer={"state": {0: opt} if opt else {}, "param_groups": meta.get("param_groups", [])},
            objective=objective,
            rng=tensors["rng"],
            history=list(meta.get("history", [])),
            best_ctx=tensors.get("best_ctx"),
            best=dict(meta.get("best", {})),
        )


@dataclass
class TrainResult:
    ctx: torch.Tensor  # (n_ctx, ctx_dim)
    class_features: torch.Tensor  # (K, D) learned prompt features, normalised
    prior_features: torch.Tensor  # (K, D) handcrafted prompt features, normalised
    posterior: torch.Tensor  # (N, K) softmax of the learned prompt's logits
    prior_posterior: torch.Tensor  # (N, K) softmax of the handcrafted prompt's logits
    confidence: torch.Tensor  # (N, K) the objective's confidences
    mask: torch.Tensor  # (N, K) candidate mask (purified by POP)
    history: list[dict]
    logit_scale: float
    prior_weight: float = 0.0  # weight of the prior in ``posterior`` (chosen on held-out items)
    selection: dict = field(default_factory=dict)  # trust estimate, holdout size, chosen epoch and weight
    # log of ``posterior`` / ``prior_posterior``, exact where the probabilities underflow (results use these)
    log_posterior: torch.Tensor | None = None
    log_prior_posterior: torch.Tensor | None = None
    # annotators' votes as evidence (None when the items carry none, or votes.enabled is off): the
    # vote posterior gives the job's labels, within ``label_mask`` (the sets widened by it)
    votes: VotesResult | None = None
    label_mask: torch.Tensor | None = None


# Dense per-annotator confusions: annotators x K x K float64 values (5e7: 400 MB).
VOTES_MAX_CELLS = 50_000_000


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _clone_state(state: dict) -> dict:
    """A deep copy of an optimizer state dict (its tensors are live references otherwise)."""
    return {
        "state": {
            k: {n: v.clone() if torch.is_tensor(v) else v for n, v in st.items()} for k, st in state["state"].items()
        },
        "param_groups": [dict(g) for g in state["param_groups"]],
    }


def _optimizer(params: list[nn.Parameter], cfg: CleanConfig) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _lr_at(cfg: CleanConfig, step: int, steps_per_epoch: int) -> float:
    """Optional constant warm-up at 1e-5, then cosine: from lr to 0 over the remaining steps
    ('cosine_step'), or CoOp's per epoch ('cosine_epoch': Dassl's CosineAnnealingLR over ``epochs``
    epochs, stepped once an epoch and restarted after the warm-up, as ConstantWarmupScheduler does)."""
    t = cfg.train
    warm = t.warmup_epochs * steps_per_epoch
    if step < warm:
        return 1e-5
    if t.lr_schedule == "cosine_epoch":
        after = step // steps_per_epoch - t.warmup_epochs
        return 0.5 * t.lr * (1.0 + math.cos(math.pi * after / t.epochs))
    total = max(t.epochs * steps_per_epoch - warm, 1)
    return 0.5 * t.lr * (1.0 + math.cos(math.pi * (step - warm) / total))


@torch.no_grad()
def all_logits(features: torch.Tensor, class_features: torch.Tensor, scale: float, chunk: int = 8192) -> torch.Tensor:
    out = [scale * features[i : i + chunk] @ class_features.T for i in range(0, features.shape[0], chunk)]
    return torch.cat(out) if out else features.new_zeros(0, class_features.shape[0])


def train(
    backbone: Backbone,
    classnames: Sequence[str],
    features: torch.Tensor,
    mask: torch.Tensor,
    cfg: CleanConfig,
    hooks: Hooks | None = None,
    resume: Checkpoint | None = None,
    progress: bool = False,
    votes: Votes | None = None,
) -> TrainResult:
    """Tune the context on (N, D) cached image features with (N, K) candidate masks.

    With ``votes`` (and ``votes.enabled``), the annotators' votes are fitted first
    (:func:`app.ml.crowd.fit_votes`); their posterior widens each item's set by the classes it
    gives at least ``votes.min_posterior``, starts the objective's confidences and is mixed into
    the prompt's target with weight ``votes.teacher_weight``."""
    hooks = hooks or Hooks()
    if features.shape[0] != mask.shape[0] or mask.shape[1] != len(classnames):
        raise ValueError(
            f"shape mismatch: features {tuple(features.shape)}, mask {tuple(mask.shape)}, K={len(classnames)}"
        )
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError(f"item {int((mask.sum(dim=1) == 0).nonzero()[0])} has an empty candidate set")
    device = backbone.device
    vres, teacher, votes_note = None, None, None
    if votes is not None and cfg.votes.enabled and len(votes.annotators) * len(classnames) ** 2 > VOTES_MAX_CELLS:
        votes_note = (
            f"votes not used: {len(votes.annotators)} annotators x {len(classnames)}^2 classes is over the "
            f"{VOTES_MAX_CELLS:,} confusion cells the EM holds in memory; the union of the votes was used"
        )
    elif votes is not None and cfg.votes.enabled:
        v = cfg.votes
        vres = fit_votes(
            features, votes, len(classnames), model=v.model, rounds=v.rounds, smoothing=v.smoothing,
            folds=v.folds, l2=v.l2, steps=v.steps, candidates=mask, seed=cfg.train.seed,
        )  # fmt: skip
        q = vres.posterior
        top = F.one_hot(q.argmax(dim=1), q.shape[1]).bool()
        mask = ((mask > 0) | (q >= v.min_posterior) | top).float()
        teacher = (q * mask / (q * mask).sum(dim=1, keepdim=True)).float().to(device)
    label_mask = mask
    seed_everything(cfg.train.seed)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    scale = backbone.logit_scale
    n = mask.shape[0]
    feats = features.to(device).float()

    ctx = nn.Parameter(backbone.context_init(cfg.prompt.ctx_init, cfg.prompt.n_ctx, gen).to(device))
    encoder = backbone.prompt_encoder(classnames, ctx.shape[0])
    prior = handcrafted_features(backbone, classnames, cfg.templates).to(device)
    prior_logits = all_logits(feats, prior, scale)

    prior_post = F.softmax(prior_logits, dim=1)
    trust = prior_trust(prior_post, mask.to(device).float(), power=cfg.alignment.trust_power)
    align = cfg.alignment
    mix = align.mix
    if align.auto_trust:
        mix = mix.model_copy(update={"prior_weight_max": min(mix.prior_weight_max, trust.weight)})
    held = holdout_split(n, cfg.selection.holdout_fraction, cfg.train.seed).to(device)
    train_idx = (~held).nonzero().flatten()
    n_train = int(train_idx.numel())

    objective = build_objective(cfg.objective)
    confidence = objective.init_confidence(mask).to(device)
    if teacher is not None and objective.keeps_confidence and confidence.shape == teacher.shape:
        confidence = teacher.clone()
    beta = cfg.votes.teacher_weight if teacher is not None else 0.0
    cur_mask = mask.to(device).float()
    opt = _optimizer([ctx], cfg)
    start_epoch, history = 0, []
    prev_choice = None
    best_ctx, best = None, {}
    if resume is not None:
        with torch.no_grad():
            ctx.copy_(resume.ctx.to(device))
        confidence = resume.confidence.to(device).clone()
        cur_mask = resume.mask.to(device).clone()
        if resume.optimizer.get("state"):
            opt.load_state_dict(resume.optimizer)
        objective.load_state_dict(resume.objective)
        gen.set_state(resume.rng)
        start_epoch, history = resume.epoch, list(resume.history)
        best_ctx = None if resume.best_ctx is None else resume.best_ctx.to(device).clone()
        best = dict(resume.best)
        with torch.no_grad():
            post = F.softmax(all_logits(feats, encoder(ctx), scale), dim=1)
        prev_choice = (post * cur_mask).argmax(dim=1)

    paper = align.enabled and align.mode == "paper"  # the paper's rule; the others are Candor's mixed target
    use_target = align.enabled and objective.keeps_confidence and align.mode in ("target", "both")
    use_extra = align.enabled and not paper and (not objective.keeps_confidence or align.mode in ("extra_loss", "both"))
    bsz = cfg.train.batch_size
    steps = math.ceil(n_train / bsz)
    total_steps = max(cfg.train.epochs * steps - 1, 1)
    started = time.monotonic()
    bar = tqdm(total=(cfg.train.epochs - start_epoch) * steps, desc="training", unit="step", disable=not progress)

    for epoch in range(start_epoch, cfg.train.epochs):
        order = train_idx[torch.randperm(n_train, generator=gen).to(device)]
        losses, align_weights = [], []
        for step in range(steps):
            if hooks.should_cancel is not None and hooks.should_cancel():
                bar.close()
                raise Cancelled()
            global_step = epoch * steps + step
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, global_step, steps)
            idx = order[step * bsz : (step + 1) * bsz]
            s = cur_mask[idx]
            logits = scale * feats[idx] @ encoder(ctx).T
            m = None
            if align.enabled and not paper:
                alpha = learnable_weight(mix, global_step / total_steps)
                m = mixed_posterior(logits, prior_logits[idx], s, alpha, mix.space, mix.temperature)
                if beta > 0:
                    m = _with_teacher(m, teacher[idx], beta)
            if use_target:
                target = objective.confidence_from(logits.detach(), s, m)
                loss = objective.loss(logits, s, target)
            else:
                loss = objective.loss(logits, s, confidence[idx])
            if use_extra:
                loss = loss + align.lam * soft_cross_entropy(logits, m)
            if paper:  # trust = 1 unless auto trust capped the prior's weight
                loss, lam = paper_alignment(loss, logits, prior_logits[idx], s, mix.prior_weight_max)
                align_weights.append(float(lam))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            upd_logits, upd_m = logits, m
            if objective.update_after_step:  # RC, LWS, LWC, CAVL: their references run the batch again
                with torch.no_grad():
                    upd_logits = scale * feats[idx] @ encoder(ctx).T
                if use_target:
                    upd_m = mixed_posterior(upd_logits, prior_logits[idx], s, alpha, mix.space, mix.temperature)
                    if beta > 0:
                        upd_m = _with_teacher(upd_m, teacher[idx], beta)
            objective.update(confidence, idx, upd_logits, s, upd_m if use_target else None)
            losses.append(float(loss.detach()))
            bar.update(1)
            if hooks.on_step is not None:
                hooks.on_step(
                    Progress(
                        epoch, cfg.train.epochs, step + 1, steps, losses[-1], time.monotonic() - started, start_epoch
                    )
                )

        cur_mask = objective.on_epoch_end(epoch, confidence, cur_mask)
        with torch.no_grad():
            post = F.softmax(all_logits(feats, encoder(ctx), scale), dim=1)
        inside = (post * cur_mask).sum(dim=1)
        choice = (post * cur_mask).argmax(dim=1)
        record = {
            "epoch": epoch + 1,
            "loss": sum(losses) / len(losses),
            "candidate_mass": float(inside.mean()),
            "candidate_loglik": float(inside.clamp_min(1e-12).log().mean()),
            "changed": None if prev_choice is None else float((choice != prev_choice).float().mean()),
        }
        if align_weights:  # the paper's adaptive weight lambda, mean over the epoch's steps
            record["align_weight"] = sum(align_weights) / len(align_weights)
        if bool(held.any()):
            est = estimate_accuracy(post[held], mask.to(device)[held].float())
            record["holdout_accuracy_est"] = round(est.accuracy, 4)
            if cfg.selection.best_epoch and (not best or est.accuracy > best["score"]):
                best, best_ctx = {"epoch": epoch + 1, "score": est.accuracy}, ctx.detach().clone()
        prev_choice = choice
        history.append(record)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(
                Checkpoint(
                    epoch=epoch + 1,
                    ctx=ctx.detach().clone(),
                    confidence=confidence.clone(),
                    mask=cur_mask.clone(),
                    optimizer=_clone_state(opt.state_dict()),
                    objective={k: v.clone() for k, v in objective.state_dict().items()},
                    rng=gen.get_state(),
                    history=list(history),
                    best_ctx=None if best_ctx is None else best_ctx.clone(),
                    best=dict(best),
                )
            )
    bar.close()

    # Label-free choices on held-out items, each only when clearly better (two standard errors)
    # than the default of the last epoch and no prior in the posterior.
    hm = mask.to(device)[held].float()
    final_ctx = ctx.detach()
    if best_ctx is not None and best["epoch"] != len(history):
        with torch.no_grad():
            last_post = F.softmax(all_logits(feats[held], encoder(final_ctx), scale), dim=1)
        last = estimate_accuracy(last_post, hm)
        if best["score"] - last.accuracy > 2 * last.stderr:
            final_ctx = best_ctx
        else:
            best = {"epoch": len(history), "score": last.accuracy}
    with torch.no_grad():
        learned = encoder(final_ctx)
        learned_logits = all_logits(feats, learned, scale)
        learned_post = F.softmax(learned_logits, dim=1)
    weight, scores = 0.0, {}
    if bool(held.any()):
        estimates = {
            w: estimate_accuracy((1 - w) * learned_post[held] + w * prior_post[held], hm)
            for w in cfg.selection.predict_prior_weights
        }
        scores = {str(w): round(e.accuracy, 4) for w, e in estimates.items()}
        base = estimates.get(0.0) or estimate_accuracy(learned_post[held], hm)
        top = max(estimates, key=lambda w: (estimates[w].accuracy, -w))
        if estimates[top].accuracy - base.accuracy > 2 * base.stderr:
            weight = float(top)
    posterior = (1 - weight) * learned_post + weight * prior_post
    selection = {
        "trust": trust.to_dict(),
        "prior_weight_max_used": round(mix.prior_weight_max, 4) if align.enabled else 0.0,
        "holdout_items": int(held.sum()),
        "selected_epoch": best.get("epoch", len(history)),
        "predict_prior_weight": weight,
        "holdout_accuracy_est_by_prior_weight": scores,
    } | ({"votes": votes_note} if votes_note else {})
    return TrainResult(
        ctx=final_ctx.cpu(),
        class_features=learned.cpu(),
        prior_features=prior.cpu(),
        posterior=posterior.cpu(),
        prior_posterior=prior_post.cpu(),
        confidence=confidence.cpu(),
        mask=cur_mask.cpu(),
        history=history,
        logit_scale=scale,
        prior_weight=weight,
        selection=selection,
        log_posterior=log_mix(F.log_softmax(learned_logits, dim=1), F.log_softmax(prior_logits, dim=1), weight).cpu(),
        log_prior_posterior=F.log_softmax(prior_logits, dim=1).cpu(),
        votes=vres,
        label_mask=label_mask.cpu() if vres is not None else None,
    )


def _with_teacher(m: torch.Tensor, teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """The alignment target with the vote posterior mixed in (both are within the item's set)."""
    return (1 - beta) * m + beta * teacher
