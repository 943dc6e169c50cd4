"""The label-free trust estimator on synthetic cases with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.ml.trust import estimate_accuracy, holdout_split, prior_trust

K, N = 10, 6000


def setting(q: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    mask = (torch.rand(N, K, generator=g) < q).float()
    mask[torch.arange(N), y] = 1.0
    return g, y, mask


def model_with_accuracy(acc: float, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A posterior whose top-1 is the true label with probability ``acc``, else a random wrong one."""
    right = torch.rand(len(y), generator=g) < acc
    wrong = (y + torch.randint(1, K, (len(y),), generator=g)) % K
    top = torch.where(right, y, wrong)
    return F.one_hot(top, K).float() * 0.7 + 0.03


@pytest.mark.parametrize("q", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("acc", [0.1, 0.3, 0.6, 0.9])
def test_estimate_recovers_the_true_accuracy(q, acc):
    g, y, mask = setting(q)
    est = estimate_accuracy(model_with_accuracy(acc, y, g), mask)
    assert est.accuracy == pytest.approx(acc, abs=max(0.03, 3 * est.stderr))
    assert est.chance == pytest.approx(q, abs=0.02)


def test_an_informative_prior_earns_trust_and_a_random_one_none():
    g, y, mask = setting(0.3)
    informative = prior_trust(model_with_accuracy(0.7, y, g), mask)
    assert informative.weight == pytest.approx((0.7 - 0.1) / 0.9, abs=0.05)
    random_prior = prior_trust(torch.rand(N, K, generator=g), mask)
    assert random_prior.weight == 0.0
    weak_posterior = model_with_accuracy(0.28, y, g)
    weak = prior_trust(weak_posterior, mask)
    assert 0.1 < weak.weight < informative.weight
    squared = prior_trust(weak_posterior, mask, power=2.0)  # the product default
    assert squared.weight == pytest.approx(weak.weight**2, rel=1e-6) and squared.weight < 0.06


def test_uninformative_sets_give_no_trust():
    g, y, _ = setting(0.3)
    full = torch.ones(N, K)
    assert prior_trust(model_with_accuracy(0.9, y, g), full).weight == 0.0


def test_holdout_split():
    held = holdout_split(2000, 0.1, seed=3)
    assert int(held.sum()) == 200 and torch.equal(held, holdout_split(2000, 0.1, seed=3))
    assert not torch.equal(held, holdout_split(2000, 0.1, seed=4))
    assert int(holdout_split(500, 0.1, seed=0).sum()) == 0  # too few to spare: no holdout
    assert int(holdout_split(2000, 0.0, seed=0).sum()) == 0


def test_training_never_sees_held_out_items(tiny):
    from app.ml.config import CleanConfig
    from app.ml.trainer import train

    classes = ["cat", "dog", "bird", "fish", "horse"]
    g = torch.Generator().manual_seed(0)
    centers = tiny.prompt_encoder(classes, 4)(torch.randn(4, tiny.ctx_dim, generator=g) * 0.5).detach()
    n = 400
    y = torch.randint(0, 5, (n,), generator=g)
    feats = F.normalize(centers[y] + 0.05 * torch.randn(n, centers.shape[1], generator=g), dim=1)
    mask = (torch.rand(n, 5, generator=g) < 0.3).float()
    mask[torch.arange(n), y] = 1.0
    cfg = CleanConfig(backbone="tiny").with_overrides(
        prompt={"n_ctx": 4},
        train={"epochs": 2, "optimizer": "adamw", "lr": 0.01},
        alignment={"enabled": False},
        selection={"holdout_fraction": 0.3},
    )
    result = train(tiny, classes, feats, mask, cfg)
    held = holdout_split(n, 0.3, seed=0)
    assert result.selection["holdout_items"] == int(held.sum()) == 120
    init = mask / mask.sum(dim=1, keepdim=True)
    assert torch.allclose(result.confidence[held], init[held])  # PRODEN never updated them
    assert not torch.allclose(result.confidence[~held], init[~held])
    assert all("holdout_accuracy_est" in h for h in result.history)
    assert set(result.selection) >= {"trust", "selected_epoch", "predict_prior_weight"}


def test_paper_mode_weight_follows_the_prior_trust(tiny):
    """Auto trust in the paper's mode: a prior no better than guessing earns weight 0 (training is then
    exactly the plain objective's), an informative one earns most of the paper's weight."""
    from app.ml.backbones import handcrafted_features
    from app.ml.config import CleanConfig
    from app.ml.trainer import train

    classes = ["cat", "dog", "bird", "fish", "horse"]
    g = torch.Generator().manual_seed(0)
    prior = handcrafted_features(tiny, classes, ("a photo of a {}.",))
    n = 400
    y = torch.randint(0, 5, (n,), generator=g)
    mask = (torch.rand(n, 5, generator=g) < 0.3).float()
    mask[torch.arange(n), y] = 1.0
    informative = F.normalize(prior[y] + 0.02 * torch.randn(n, prior.shape[1], generator=g), dim=1)
    unrelated = F.normalize(torch.randn(n, prior.shape[1], generator=g), dim=1)  # the prior's pick ignores y

    def cfg(**alignment):
        return CleanConfig(backbone="tiny").with_overrides(
            prompt={"n_ctx": 4}, train={"epochs": 2, "optimizer": "adamw", "lr": 0.01}, alignment=alignment
        )

    paper = cfg(mode="paper", auto_trust=True)
    good = train(tiny, classes, informative, mask, paper)
    assert good.selection["trust"]["prior_weight_max"] > 0.5
    assert good.selection["prior_weight_max_used"] == good.selection["trust"]["prior_weight_max"]
    assert all(h["align_weight"] > 0.1 for h in good.history)

    random_prior = train(tiny, classes, unrelated, mask, paper)
    assert random_prior.selection["trust"]["prior_weight_max"] == 0.0
    assert all(h["align_weight"] == 0.0 for h in random_prior.history)
    plain = train(tiny, classes, unrelated, mask, cfg(enabled=False))
    assert torch.equal(random_prior.ctx, plain.ctx) and torch.equal(random_prior.confidence, plain.confidence)
    untrusted = train(tiny, classes, unrelated, mask, cfg(mode="paper", auto_trust=False))
    assert not torch.equal(untrusted.ctx, plain.ctx)  # fully trusted, the same random prior does move training
