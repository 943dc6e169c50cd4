"""Objectives inside the training loop: when each updates its confidences, and POP's purification
at the product defaults (tiny model, synthetic features with known classes)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from app.ml.config import CleanConfig
from app.ml.objectives import restrict_logits
from app.ml.trainer import Checkpoint, Hooks, train

CLASSES = ["cat", "dog", "bird", "fish", "horse"]


@pytest.fixture(scope="module")
def problem(tiny):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, tiny.ctx_dim, generator=g) * 0.5
    centers = tiny.prompt_encoder(CLASSES, 4)(hidden).detach()
    n = 160
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    feats = F.normalize(centers[y] + 0.05 * torch.randn(n, centers.shape[1], generator=g), dim=1)
    mask = (torch.rand(n, len(CLASSES), generator=g) < 0.4).float()
    mask[torch.arange(n), y] = 1.0
    return feats, mask


def cfg(objective: str, **train) -> CleanConfig:
    return CleanConfig(backbone="tiny").with_overrides(
        prompt={"n_ctx": 4},
        objective={"name": objective},
        alignment={"enabled": False},
        train={"optimizer": "adamw", "lr": 0.01, **train},
    )


def logits_with(tiny, ctx: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tiny.logit_scale * feats @ tiny.prompt_encoder(CLASSES, ctx.shape[0])(ctx).T


@pytest.mark.parametrize("name", ["rc", "proden"])
def test_rc_updates_from_the_outputs_after_the_step_and_proden_from_those_before(tiny, problem, name):
    """One step per epoch (the batch is every item): after training, RC's confidences are the final
    model's posterior within the candidates; PRODEN's are the posterior of the context before the
    last step (the checkpoint of the previous epoch)."""
    feats, mask = problem
    checkpoints: list[Checkpoint] = []
    result = train(
        tiny, CLASSES, feats, mask, cfg(name, epochs=3, batch_size=len(mask)), Hooks(on_epoch_end=checkpoints.append)
    )
    after = restrict_logits(logits_with(tiny, result.ctx, feats), mask)
    before = restrict_logits(logits_with(tiny, checkpoints[1].ctx, feats), mask)
    assert float((after - before).abs().max()) > 1e-3  # the last step changed the posterior
    expected, other = (after, before) if name == "rc" else (before, after)
    assert torch.allclose(result.confidence, expected, atol=1e-5)
    assert not torch.allclose(result.confidence, other, atol=1e-4)


def test_rc_and_proden_now_train_differently(tiny, problem):
    feats, mask = problem
    rc = train(tiny, CLASSES, feats, mask, cfg("rc", epochs=3, batch_size=32))
    proden = train(tiny, CLASSES, feats, mask, cfg("proden", epochs=3, batch_size=32))
    assert not torch.equal(rc.ctx, proden.ctx)
    assert float((rc.confidence - proden.confidence).abs().max()) > 1e-3


def test_pop_purifies_within_the_default_epochs_and_differs_from_proden(tiny, problem):
    feats, mask = problem
    defaults = CleanConfig()
    assert defaults.train.epochs == 20 and defaults.objective.pop.warmup == 10
    checkpoints: list[Checkpoint] = []
    pop = train(tiny, CLASSES, feats, mask, cfg("pop", batch_size=32), Hooks(on_epoch_end=checkpoints.append))
    proden = train(tiny, CLASSES, feats, mask, cfg("proden", batch_size=32))
    sizes = [int(c.mask.sum()) for c in checkpoints]
    assert len(sizes) == 20
    # untouched through epoch 10, purified at the end of epoch 11 (0-based 10), never widened
    assert sizes[:10] == [int(mask.sum())] * 10 and sizes[10] < sizes[9]
    assert all(b <= a for a, b in pairwise(sizes)) and torch.all(pop.mask <= mask)
    assert not torch.equal(pop.ctx, proden.ctx)  # trained on the purified sets from epoch 12 on


@pytest.mark.parametrize("name", ["rc", "cavl"])
def test_resume_matches_an_uninterrupted_run_with_updates_after_the_step(tiny, problem, name):
    feats, mask = problem
    config = cfg(name, epochs=3, batch_size=32)
    checkpoints: list[Checkpoint] = []
    full = train(tiny, CLASSES, feats, mask, config, Hooks(on_epoch_end=checkpoints.append))
    resumed = train(tiny, CLASSES, feats, mask, config, resume=checkpoints[0])
    assert torch.allclose(resumed.ctx, full.ctx, atol=1e-6)
    assert torch.allclose(resumed.confidence, full.confidence, atol=1e-6)
