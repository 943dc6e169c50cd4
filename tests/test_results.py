from __future__ import annotations

import math

import pytest
import torch

from app.ml.artifacts import Classifier
from app.ml.config import OutputConfig
from app.ml.results import choice_within, item_results


def test_posterior_margin_outside_mass_and_flags():
    post = torch.tensor(
        [
            [0.70, 0.20, 0.10],  # clear: restricted (0.7/0.9, 0.2/0.9)
            [0.30, 0.28, 0.42],  # ambiguous within {0, 1}; 0.42 outside is below the 0.8 threshold
            [0.05, 0.05, 0.90],  # suspect: 0.9 outside {0, 1}
            [0.20, 0.50, 0.30],  # single candidate
        ]
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    out = item_results(["a", "b", "c", "d"], ["x", "y", "z"], post.log(), mask, OutputConfig(), post.log())
    a, b, c, d = out
    assert a.label == "x" and a.confidence == pytest.approx(0.7 / 0.9, abs=1e-6)
    assert a.posterior == pytest.approx({"x": 0.7 / 0.9, "y": 0.2 / 0.9}, abs=1e-6)
    assert a.margin == pytest.approx(0.5 / 0.9, abs=1e-6) and not a.ambiguous
    assert a.outside_mass == pytest.approx(0.1, abs=1e-6) and not a.candidates_suspect
    assert b.ambiguous and not b.candidates_suspect
    assert c.candidates_suspect and c.outside_mass == pytest.approx(0.9, abs=1e-6)
    assert d.label == "y" and d.confidence == 1.0 and d.margin == 1.0 and not d.ambiguous
    assert set(d.posterior) == {"y"} and d.prior_label == "y"
    strict = item_results(["a"], ["x", "y", "z"], post[:1].log(), mask[:1], OutputConfig(ambiguous_margin=0.9))
    assert strict[0].ambiguous


GAPS = [0.0, 1.0, 27.6, 30.0, 35.0, 50.0, 100.0, 150.0, 200.0]
E1 = math.exp(-1.0)
SPLIT = (1 / (1 + E1), E1 / (1 + E1))  # 0.731 / 0.269: the two candidates are one logit apart


def extreme_logits() -> torch.Tensor:
    """Per row: a non-candidate ``gap`` logits above the candidates (classes 1, 2), another far below."""
    return torch.tensor([[g, 0.0, -1.0, -g] for g in GAPS])


def test_results_are_exact_for_logit_gaps_up_to_200():
    z = extreme_logits()
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]]).repeat(len(GAPS), 1)
    classes = ["w", "x", "y", "z"]
    for log_post in (torch.log_softmax(z, dim=1), z):  # log-probabilities, or the logits themselves
        out = item_results([str(g) for g in GAPS], classes, log_post, mask, OutputConfig(), log_post)
        for g, r in zip(GAPS, out, strict=True):
            outside = (math.exp(g) + math.exp(-g)) / (math.exp(g) + 1 + E1 + math.exp(-g))
            assert r.label == "x" and r.prior_label == "x", g
            assert r.confidence == pytest.approx(SPLIT[0], abs=1e-6), g
            assert sum(r.posterior.values()) == pytest.approx(1.0, abs=1e-6), g
            assert r.posterior["y"] == pytest.approx(SPLIT[1], abs=1e-6), g
            assert r.margin == pytest.approx(SPLIT[0] - SPLIT[1], abs=1e-6) and not r.ambiguous, g
            assert r.outside_mass == pytest.approx(outside, abs=1e-6), g
            assert r.candidates_suspect == (outside > 0.8), g
    # a tie between the candidates is ambiguous at every gap, and the choice is the same either way
    tie = torch.tensor([[g, 0.0, 0.0, -g] for g in GAPS])
    assert all(
        r.ambiguous and r.margin == 0.0 for r in item_results(list("abcdefghi"), classes, tie, mask, OutputConfig())
    )
    assert choice_within(torch.log_softmax(z, dim=1), mask).tolist() == [1] * len(GAPS)


def test_empty_candidate_row_is_an_error_naming_the_row():
    with pytest.raises(ValueError, match="row 1 is empty"):
        item_results(["a", "b"], ["x", "y"], torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), OutputConfig())


def classifier(prior_weight: float = 0.0, swap_prior: bool = False) -> Classifier:
    eye = torch.eye(4)
    prior = eye[[0, 2, 1, 3]] if swap_prior else eye
    return Classifier(
        backbone="tiny",
        backbone_id="tiny",
        classes=["w", "x", "y", "z"],
        ctx=torch.zeros(1, 4),
        class_features=eye,
        prior_features=prior,
        logit_scale=100.0,
        prior_weight=prior_weight,
    )


def test_classifier_probabilities_within_candidates_are_exact_at_extreme_logits():
    feats = extreme_logits() / 100.0  # logits = 100 * feats @ I = the extreme rows
    ones = torch.ones(len(GAPS), dtype=torch.float64)
    probs = classifier().probabilities(feats, candidates=["x", "y"]).double()
    assert torch.allclose(probs.sum(dim=1), ones, atol=1e-6)
    assert torch.allclose(probs[:, 1:3], torch.tensor([SPLIT] * len(GAPS), dtype=torch.float64), atol=1e-6)
    assert torch.all(probs[:, [0, 3]] == 0)
    # with the prior mixed in (weight 1/4, its two candidates swapped) the mixture is exact too
    mixed = classifier(0.25, swap_prior=True).probabilities(feats, candidates=["y", "x"]).double()
    x, y = 0.75 + 0.25 * E1, 0.75 * E1 + 0.25
    assert torch.allclose(mixed.sum(dim=1), ones, atol=1e-6)
    assert torch.allclose(mixed[:, 1:3], torch.tensor([[x / (x + y), y / (x + y)]] * len(GAPS)).double(), atol=1e-6)
    # without candidates: the full posterior, rows summing to one
    assert torch.allclose(classifier().probabilities(feats).double().sum(dim=1), ones, atol=1e-6)
