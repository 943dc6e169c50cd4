"""The training loop on the tiny model with synthetic features whose classes are known."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from app.ml.config import OBJECTIVES, CleanConfig
from app.ml.results import choice_within
from app.ml.trainer import Cancelled, Checkpoint, Hooks, train

CLASSES = ["cat", "dog", "bird", "fish", "horse"]


@pytest.fixture(scope="module")
def problem(tiny):
    """Image features drawn around the class features of a hidden 'true' context."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, tiny.ctx_dim, generator=g) * 0.5
    centers = tiny.prompt_encoder(CLASSES, 4)(hidden).detach()
    n = 200
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    feats = F.normalize(centers[y] + 0.05 * torch.randn(n, centers.shape[1], generator=g), dim=1)
    mask = (torch.rand(n, len(CLASSES), generator=g) < 0.3).float()
    mask[torch.arange(n), y] = 1.0
    return feats, mask, y


def cfg(preset: str | None = None, **sections):
    base = {"prompt": {"n_ctx": 4}, "train": {"epochs": 4, "optimizer": "adamw", "lr": 0.01, "batch_size": 32}}
    if preset:  # the preset's recipe, the test's size
        base = {"prompt": {"n_ctx": 4}, "train": {"epochs": 4, "batch_size": 32}, "preset": preset}
    for key, value in sections.items():
        base[key] = base.get(key, {}) | value
    return CleanConfig(backbone="tiny").with_overrides(**base)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_learns_to_disambiguate(tiny, problem, objective):
    feats, mask, y = problem
    random_pick = float((1.0 / mask.sum(dim=1)).mean())
    result = train(tiny, CLASSES, feats, mask, cfg(objective={"name": objective}, alignment={"enabled": False}))
    acc = float((choice_within(result.posterior, mask) == y).float().mean())
    assert acc > random_pick + 0.25, (objective, acc, random_pick)
    assert result.history[-1]["candidate_mass"] > result.history[0]["candidate_mass"] - 0.05


def test_seeded_runs_are_reproducible_and_seeds_differ(tiny, problem):
    feats, mask, _ = problem
    a = train(tiny, CLASSES, feats, mask, cfg())
    b = train(tiny, CLASSES, feats, mask, cfg())
    c = train(tiny, CLASSES, feats, mask, cfg(train={"seed": 1}))
    assert torch.equal(a.ctx, b.ctx) and torch.equal(a.confidence, b.confidence)
    assert not torch.equal(a.ctx, c.ctx)


@pytest.mark.parametrize("objective", ["proden", "pop", "cc"])
def test_resume_from_checkpoint_matches_uninterrupted_run(tiny, problem, objective):
    feats, mask, _ = problem
    config = cfg(objective={"name": objective, "pop_warmup": 1, "pop_window": 2}, train={"epochs": 3})
    checkpoints: list[Checkpoint] = []
    full = train(tiny, CLASSES, feats, mask, config, hooks=Hooks(on_epoch_end=checkpoints.append))
    assert [c.epoch for c in checkpoints] == [1, 2, 3]
    # serialise the epoch-1 checkpoint the way a worker stores it, then resume from it
    tensors, meta = checkpoints[0].tensors()
    blob, meta_json = safetensors.torch.save(tensors), json.dumps(meta)
    restored = Checkpoint.from_tensors(safetensors.torch.load(blob), json.loads(meta_json))
    resumed = train(tiny, CLASSES, feats, mask, config, resume=restored)
    assert torch.allclose(resumed.ctx, full.ctx, atol=1e-6)
    assert torch.allclose(resumed.confidence, full.confidence, atol=1e-6)
    assert resumed.history == full.history


def test_cancel_between_batches(tiny, problem):
    feats, mask, _ = problem
    steps = []
    hooks = Hooks(on_step=lambda p: steps.append(p), should_cancel=lambda: len(steps) >= 3)
    with pytest.raises(Cancelled):
        train(tiny, CLASSES, feats, mask, cfg(), hooks=hooks)
    assert len(steps) == 3
    assert steps[-1].step == 3 and steps[-1].steps == 7 and steps[-1].eta_seconds >= 0


def test_only_the_context_is_trained(tiny, problem):
    feats, mask, _ = problem
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    train(tiny, CLASSES, feats, mask, cfg(train={"epochs": 1}))
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p for p in tiny.model.parameters() if p.requires_grad] == []


@pytest.mark.parametrize("mode", ["target", "extra_loss", "both"])
def test_alignment_modes_run_and_differ_from_plain(tiny, problem, mode):
    feats, mask, _ = problem
    plain = train(tiny, CLASSES, feats, mask, cfg(alignment={"enabled": False}, train={"epochs": 1}))
    aligned = train(tiny, CLASSES, feats, mask, cfg(alignment={"mode": mode}, train={"epochs": 1}))
    assert not torch.equal(plain.ctx, aligned.ctx)
    assert torch.all(aligned.confidence[mask == 0] == 0)
    assert torch.allclose(aligned.confidence.sum(dim=1), torch.ones(len(mask)), atol=1e-5)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_paper_mode_runs_on_every_objective_and_changes_training(tiny, problem, objective):
    feats, mask, _ = problem
    overrides = {"objective": {"name": objective, "pop_warmup": 1}, "train": {"epochs": 2}}
    plain = train(tiny, CLASSES, feats, mask, cfg(alignment={"enabled": False}, **overrides))
    paper = train(tiny, CLASSES, feats, mask, cfg(alignment={"mode": "paper", "auto_trust": False}, **overrides))
    assert not torch.equal(plain.ctx, paper.ctx)
    assert paper.selection["prior_weight_max_used"] == 1.0
    assert all(h["align_weight"] > 0 for h in paper.history) and "align_weight" not in plain.history[0]


def test_paper_mode_resumes_exactly(tiny, problem):
    feats, mask, _ = problem
    config = cfg(alignment={"mode": "paper", "auto_trust": False}, train={"epochs": 2})
    checkpoints: list[Checkpoint] = []
    full = train(tiny, CLASSES, feats, mask, config, hooks=Hooks(on_epoch_end=checkpoints.append))
    resumed = train(tiny, CLASSES, feats, mask, config, resume=checkpoints[0])
    assert torch.allclose(resumed.ctx, full.ctx, atol=1e-6) and resumed.history == full.history


def test_prior_weight_zero_equals_no_alignment_for_target_mode(tiny, problem):
    feats, mask, _ = problem
    plain = train(tiny, CLASSES, feats, mask, cfg(alignment={"enabled": False}, train={"epochs": 2}))
    no_prior = train(
        tiny,
        CLASSES,
        feats,
        mask,
        cfg(alignment={"mode": "target", "mix": {"prior_weight_max": 0.0}}, train={"epochs": 2}),
    )
    # with the prior's weight capped at zero the target is the learnable posterior itself: PRODEN
    # with a fresh target instead of last epoch's confidences, so the two differ but both learn
    assert not torch.equal(plain.ctx, no_prior.ctx)
    assert torch.allclose(no_prior.confidence, no_prior.confidence * mask)


def test_empty_candidate_row_is_rejected(tiny, problem):
    feats, mask, _ = problem
    bad = mask.clone()
    bad[5] = 0
    with pytest.raises(ValueError, match="item 5 has an empty candidate set"):
        train(tiny, CLASSES, feats, bad, cfg())


def test_cosine_per_epoch_follows_dassl_after_a_constant_warmup():
    """CoOp's schedule: 1e-5 during the warm-up epoch, then torch's CosineAnnealingLR(T_max=epochs) stepped
    once an epoch from its start (Dassl's ConstantWarmupScheduler with WARMUP_RECOUNT)."""
    from app.ml.trainer import _lr_at

    config = CleanConfig().with_overrides(preset="coop", train={"epochs": 6})
    steps = 4
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.002)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    expected = [1e-5]
    for _ in range(5):
        expected.append(cosine.get_last_lr()[0])
        opt.step()
        cosine.step()
    got = [[_lr_at(config, e * steps + j, steps) for j in range(steps)] for e in range(6)]
    assert all(row == [row[0]] * steps for row in got)  # constant within an epoch
    assert [row[0] for row in got] == pytest.approx(expected, rel=1e-9)
    per_step = CleanConfig().with_overrides(train={"epochs": 6})
    assert _lr_at(per_step, 1, steps) < _lr_at(per_step, 0, steps)  # the offline preset: cosine per step


def test_coop_preset_trains_with_sgd_momentum_and_a_warmup_epoch(tiny, problem):
    feats, mask, _ = problem
    checkpoints: list[Checkpoint] = []
    result = train(tiny, CLASSES, feats, mask, cfg(preset="coop"), hooks=Hooks(on_epoch_end=checkpoints.append))
    assert all(math.isfinite(h["loss"]) for h in result.history)
    first, second = (c.optimizer for c in checkpoints[:2])
    assert first["param_groups"][0]["lr"] == 1e-5 and second["param_groups"][0]["lr"] == pytest.approx(0.002)
    assert first["param_groups"][0]["momentum"] == 0.9 and first["param_groups"][0]["weight_decay"] == 5e-4
    assert "momentum_buffer" in first["state"][0]  # SGD with momentum, not AdamW
