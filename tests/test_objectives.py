"""Each PLL objective against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from app.ml.config import ObjectiveConfig
from app.ml.objectives import build_objective, restrict

Z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, math.log(2.0)]])
S = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


P = [softmax_row(r) for r in Z.tolist()]


def obj(name, **kw):
    return build_objective(ObjectiveConfig(name=name, **kw))


def test_cc_loss_is_minus_log_candidate_mass():
    expected = (-math.log(P[0][0] + P[0][1]) - math.log(P[1][0] + P[1][2])) / 2
    assert obj("cc").loss(Z, S, None).item() == pytest.approx(expected, rel=1e-6)
    assert not obj("cc").keeps_confidence


def test_naive_uniform_and_cc_variants():
    expected = (-(math.log(P[0][0]) + math.log(P[0][1])) / 2 - (math.log(P[1][0]) + math.log(P[1][2])) / 2) / 2
    assert obj("naive").loss(Z, S, None).item() == pytest.approx(expected, rel=1e-6)
    assert obj("naive", naive_variant="cc").loss(Z, S, None).item() == pytest.approx(
        obj("cc").loss(Z, S, None).item(), rel=1e-6
    )


@pytest.mark.parametrize("name", ["rc", "proden"])
def test_rc_proden_init_loss_and_update(name):
    o = obj(name)
    w = o.init_confidence(S)
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]))
    w2 = torch.tensor([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    expected = (-(0.25 * math.log(P[0][0]) + 0.75 * math.log(P[0][1])) - math.log(P[1][0])) / 2
    assert o.loss(Z, S, w2).item() == pytest.approx(expected, rel=1e-6)
    state = torch.zeros(5, 3)
    o.update(state, torch.tensor([3, 1]), Z, S)
    row0 = [P[0][0] / (P[0][0] + P[0][1]), P[0][1] / (P[0][0] + P[0][1]), 0.0]
    row1 = [1 / 3, 0.0, 2 / 3]  # p = (1, 1, 2) / 4 restricted to {0, 2}
    assert torch.allclose(state[3], torch.tensor(row0), atol=1e-6)
    assert torch.allclose(state[1], torch.tensor(row1), atol=1e-6)
    assert state[[0, 2, 4]].abs().sum() == 0


def test_lws_log_variant_by_hand():
    o = obj("lws", lws_weight=2.0)
    wz = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]
    ss = S.tolist()
    per = []
    for i in range(2):
        pos = sum(wz[i][k] * ss[i][k] * -math.log(P[i][k]) for k in range(3))
        neg = sum(wz[i][k] * (1 - ss[i][k]) * -math.log(1 - P[i][k]) for k in range(3))
        per.append(pos + 2.0 * neg)
    assert o.loss(Z, S, torch.tensor(wz)).item() == pytest.approx(sum(per) / 2, rel=1e-5)


def test_lws_loss_init_and_update():
    o = obj("lws", lws_weight=2.0, lws_loss="sigmoid")
    w = o.init_confidence(S)
    assert torch.allclose(w, torch.full((2, 3), 1 / 3))

    def psi(u):
        return 1 / (1 + math.exp(u))

    wz = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]
    zz, ss = Z.tolist(), S.tolist()
    per = []
    for i in range(2):
        pos = sum(wz[i][k] * ss[i][k] * psi(zz[i][k]) for k in range(3))
        neg = sum(wz[i][k] * (1 - ss[i][k]) * psi(-zz[i][k]) for k in range(3))
        per.append(pos + 2.0 * neg)
    assert o.loss(Z, S, torch.tensor(wz)).item() == pytest.approx(sum(per) / 2, rel=1e-6)
    state = torch.zeros(2, 3)
    o.update(state, torch.tensor([0, 1]), Z, S)
    inside0 = [P[0][0] / (P[0][0] + P[0][1]), P[0][1] / (P[0][0] + P[0][1])]
    assert torch.allclose(state[0], torch.tensor([inside0[0], inside0[1], 1.0]), atol=1e-6)
    assert torch.allclose(state[1], torch.tensor([1 / 3, 1.0, 2 / 3]), atol=1e-6)


def test_cavl_one_hot_on_logit_score():
    o = obj("cavl")
    # scores z|1-z|: row0 -> 2, 0 (within S) -> class 0; row1 -> 0 (z=0), 0.693*0.307 -> class 2
    state = torch.zeros(2, 3)
    o.update(state, torch.tensor([0, 1]), Z, S)
    assert state.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    # a logit score where z|1-z| disagrees with z: z = 0.5 scores 0.25, z = 0.9 scores 0.09
    z = torch.tensor([[0.5, 0.9, 5.0]])
    s = torch.tensor([[1.0, 1.0, 0.0]])
    out = torch.zeros(1, 3)
    o.update(out, torch.tensor([0]), z, s)
    assert out.tolist() == [[1.0, 0.0, 0.0]]


def test_pop_purifies_after_warmup_and_keeps_best():
    o = obj("pop", pop_warmup=2, pop_window=2, pop_theta=0.1)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w = torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.5, 0.0]])
    same = o.on_epoch_end(0, w, mask)  # warm-up: nothing dropped
    assert torch.equal(same, mask)
    new = o.on_epoch_end(1, w, mask)
    # row 0: 0.05 / 0.9 < 0.1 -> classes 1, 2 dropped; row 1 keeps both
    assert new.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert torch.allclose(w, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    assert set(o.state_dict()) == {"theta", "window"}


def test_restrict_guards_underflow_and_empty_rows():
    p = torch.tensor([[0.0, 0.0, 1.0]])
    assert restrict(p, torch.tensor([[1.0, 1.0, 0.0]])).tolist() == [[0.5, 0.5, 0.0]]
    with pytest.raises(ValueError, match="empty"):
        restrict(p, torch.zeros(1, 3))
