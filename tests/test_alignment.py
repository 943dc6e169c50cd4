from __future__ import annotations

import math

import pytest
import torch

from app.ml.alignment import learnable_weight, mixed_posterior
from app.ml.config import MixConfig
from app.ml.objectives import restrict

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
