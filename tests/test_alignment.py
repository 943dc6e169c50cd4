from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from app.ml.alignment import learnable_weight, mixed_posterior, paper_alignment
from app.ml.config import OBJECTIVES, MixConfig, ObjectiveConfig
from app.ml.objectives import build_objective, restrict, restrict_logits

torch.manual_seed(0)
ZL = torch.randn(6, 5) * 3
ZH = torch.randn(6, 5) * 3
MASK = torch.tensor(
    [[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 1, 0, 1, 0]],
    dtype=torch.float32,
)


@pytest.mark.parametrize("space", ["prob", "logit"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_target_is_zero_outside_candidates_and_sums_to_one(space, alpha):
    m = mixed_posterior(ZL, ZH, MASK, alpha, space=space)
    assert torch.all(m[MASK == 0] == 0)
    assert torch.allclose(m.sum(dim=1), torch.ones(6), atol=1e-6)
    assert not m.requires_grad


def test_weight_zero_is_the_zero_shot_posterior_restricted():
    m = mixed_posterior(ZL, ZH, MASK, 0.0)
    assert torch.allclose(m, restrict(torch.softmax(ZH, dim=1), MASK), atol=1e-6)
    m1 = mixed_posterior(ZL, ZH, MASK, 1.0)
    assert torch.allclose(m1, restrict(torch.softmax(ZL, dim=1), MASK), atol=1e-6)


def test_prob_mixing_by_hand():
    zl = torch.tensor([[0.0, 0.0, 0.0]])
    zh = torch.tensor([[math.log(3.0), 0.0, 0.0]])
    s = torch.tensor([[1.0, 1.0, 0.0]])
    m = mixed_posterior(zl, zh, s, 0.5, temperature=1.0)
    # p^L = (1/3, 1/3, 1/3), p^H = (3/5, 1/5, 1/5); mix = (7/15, 4/15, 4/15); restrict -> (7/11, 4/11, 0)
    assert torch.allclose(m, torch.tensor([[7 / 11, 4 / 11, 0.0]]), atol=1e-6)


def test_temperature_flattens():
    sharp = mixed_posterior(ZL, ZH, MASK, 0.5, temperature=0.5)
    flat = mixed_posterior(ZL, ZH, MASK, 0.5, temperature=10.0)
    assert flat[3].max() < sharp[3].max()


def test_no_gradient_flows():
    zl = ZL.clone().requires_grad_(True)
    assert not mixed_posterior(zl, ZH, MASK, 0.5).requires_grad


def test_all_masked_row_raises():
    mask = MASK.clone()
    mask[2] = 0
    with pytest.raises(ValueError, match="empty"):
        mixed_posterior(ZL, ZH, mask, 0.5)


def test_schedules():
    lin = MixConfig(schedule="linear", alpha_start=0.2, alpha_end=1.0)
    assert learnable_weight(lin, 0.0) == pytest.approx(0.2)
    assert learnable_weight(lin, 0.5) == pytest.approx(0.6)
    assert learnable_weight(lin, 1.0) == pytest.approx(1.0)
    cos = MixConfig(schedule="cosine", alpha_start=0.0, alpha_end=1.0)
    assert learnable_weight(cos, 0.25) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    const = MixConfig(schedule="constant", alpha_start=0.3, alpha_end=1.0)
    assert learnable_weight(const, 0.9) == pytest.approx(0.3)
    capped = MixConfig(schedule="constant", alpha_start=0.3, prior_weight_max=0.4)
    assert learnable_weight(capped, 0.0) == pytest.approx(0.6)
    assert learnable_weight(MixConfig(prior_weight_max=0.0), 0.0) == pytest.approx(1.0)


# --- the paper's rule (alignment.mode = "paper") against a transcription of its formula -------------


def reference_paper_loss(pll_loss, output, logits_fix, label):
    """The official rule written out from its formula (zhangzf01/CoOpPLL, trainers/base_trainer/palace.py
    lines 78-104): the handcrafted softmax times the candidate mask, renormalised, is the target of a
    cross-entropy on the learnable logits, added at weight pll / align (both detached)."""
    teacher = torch.softmax(logits_fix, dim=-1) * label
    teacher = teacher / teacher.sum(dim=-1, keepdim=True)
    align = (-torch.log_softmax(output, dim=-1) * teacher).sum(dim=-1).mean()
    return pll_loss + align * pll_loss.detach() / align.detach()


def random_batch(seed: int, b: int = 24, k: int = 7, scale: float = 10.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    zh = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    s = (torch.rand(b, k, generator=g) < 0.4).double()
    s[torch.arange(b), torch.randint(0, k, (b,), generator=g)] = 1.0
    return z, zh, s


def pll(name: str, logits: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    objective = build_objective(ObjectiveConfig(name=name))
    w = objective.init_confidence(s).to(logits.dtype)
    return objective.loss(logits, s, w)


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_mode_loss_and_logit_gradient_match_the_reference(name, seed):
    z, zh, s = random_batch(seed)
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ours, lam = paper_alignment(pll(name, z1, s), z1, zh, s)
    ref = reference_paper_loss(pll(name, z2, s), z2, zh, s)
    (g1,) = torch.autograd.grad(ours, z1)
    (g2,) = torch.autograd.grad(ref, z2)
    assert abs(float(ours.detach()) - float(ref.detach())) <= 1e-6
    assert float((g1 - g2).abs().max()) <= 1e-6
    assert float(g1.abs().max()) > 1e-3  # a real gradient, not two zeros
    assert 0 < float(lam) < 100


@pytest.mark.parametrize("name", OBJECTIVES)
def test_paper_mode_context_gradient_matches_the_reference(name):
    """The same through the tiny model's text tower, down to the context vectors (float64)."""
    from app.ml.backbones import load_backbone

    bb = load_backbone("tiny")
    bb.model.double()
    classes = ["cat", "dog", "bird", "fish", "horse", "cow", "frog"]
    encoder = bb.prompt_encoder(classes, 4)
    g = torch.Generator().manual_seed(5)
    feats = F.normalize(torch.randn(24, bb.embed_dim, generator=g, dtype=torch.float64), dim=1)
    _, zh, s = random_batch(5, b=24, k=len(classes))
    ctx0 = torch.randn(4, bb.ctx_dim, generator=g, dtype=torch.float64) * 0.02
    grads, values = [], []
    for rule in ("ours", "reference"):
        ctx = ctx0.clone().requires_grad_(True)
        z = bb.logit_scale * feats @ encoder(ctx).T
        if rule == "ours":
            loss, _ = paper_alignment(pll(name, z, s), z, zh, s)
        else:
            loss = reference_paper_loss(pll(name, z, s), z, zh, s)
        (grad,) = torch.autograd.grad(loss, ctx)
        grads.append(grad)
        values.append(float(loss.detach()))
    assert abs(values[0] - values[1]) <= 1e-6
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-6
    assert float(grads[0].abs().max()) > 1e-6


def test_paper_weight_balances_the_two_terms_and_trust_scales_it():
    z, zh, s = random_batch(3)
    zv = z.clone().requires_grad_(True)
    base = pll("proden", zv, s)
    _, lam = paper_alignment(base, zv, zh, s)
    target = restrict_logits(zh, s)
    align = -(target * torch.log_softmax(z, dim=1)).sum(dim=1).mean()
    assert float(lam * align) == pytest.approx(float(base.detach()), rel=1e-12)  # equal size at every batch
    _, lam_half = paper_alignment(base, zv, zh, s, trust=0.25)
    assert float(lam_half) == pytest.approx(0.25 * float(lam), rel=1e-12)
    loss0, lam0 = paper_alignment(base, zv, zh, s, trust=0.0)
    (g0,) = torch.autograd.grad(loss0, zv, retain_graph=True)
    (gp,) = torch.autograd.grad(base, zv)
    assert float(lam0) == 0.0 and torch.equal(g0, gp)  # no trust: the objective alone


def test_paper_weight_is_zero_where_the_alignment_loss_vanishes():
    """A one-hot target the learnable prompt already matches: the paper's ratio would divide by zero."""
    z = torch.tensor([[200.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    zh = torch.tensor([[0.0, 5.0, 1.0]], dtype=torch.float64)
    base = pll("cc", z, s)
    loss, lam = paper_alignment(base, z, zh, s)
    assert float(lam) == 0.0 and torch.isfinite(loss) and float(loss.detach()) == float(base.detach())


@pytest.mark.parametrize("gap", [30.0, 100.0, 200.0])
def test_paper_target_sums_to_one_at_extreme_logits(gap):
    zh = torch.tensor([[gap, 0.0, 0.0, -gap], [0.0, gap, 1.0, 2.0]])
    s = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0]])
    t = restrict_logits(zh, s)
    assert torch.allclose(t.sum(dim=1), torch.ones(2), atol=1e-6)
    assert torch.all(t[s == 0] == 0)
    assert float(t[0, 1]) == pytest.approx(0.5)
    assert float(t[1, 3]) == pytest.approx(math.e**2 / (1 + math.e + math.e**2))
