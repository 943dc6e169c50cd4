"""Each PLL objective against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from app.ml.config import OBJECTIVES, CleanConfig, ObjectiveConfig, TrainConfig
from app.ml.objective_registry import OBJECTIVE_SPECS, SPECS_BY_NAME, PopParams, objectives_table
from app.ml.objectives import build_objective, masked_softmax, restrict, restrict_logits

Z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, math.log(2.0)]])
S = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


def softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


P = [softmax_row(r) for r in Z.tolist()]


def obj(name, **kw):
    return build_objective(ObjectiveConfig(name=name, **kw))


def obj_from(cfg):
    return build_objective(cfg)


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


def test_lwc_by_hand():
    o = obj("lwc", lwc={"beta": 2.0})
    wz = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]
    ss = S.tolist()
    per = []
    for i in range(2):
        pos = sum(wz[i][k] * ss[i][k] * -math.log(P[i][k]) for k in range(3))
        neg = sum(wz[i][k] * (1 - ss[i][k]) * -math.log(1 - P[i][k]) for k in range(3))
        per.append(pos + 2.0 * neg)
    assert o.loss(Z, S, torch.tensor(wz)).item() == pytest.approx(sum(per) / 2, rel=1e-5)


def test_lws_loss_init_and_update():
    o = obj("lws", lws={"beta": 2.0})
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
    o = obj("pop", pop={"warmup": 1, "window": 2, "theta": 0.1})
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
    with pytest.raises(ValueError, match="row 1 is empty"):
        restrict(p.repeat(2, 1), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="row 0 is empty"):
        restrict_logits(torch.zeros(1, 3), torch.zeros(1, 3))
    # masked_softmax, the shared helper, gives an empty mask row zeros (LWS's non-candidate part)
    assert masked_softmax(torch.tensor([[3.0, 1.0]]), torch.tensor([[0.0, 0.0]])).tolist() == [[0.0, 0.0]]


# ---- exact posteriors at extreme logits --------------------------------------------------------

GAPS = [0.0, 1.0, 27.6, 30.0, 35.0, 50.0, 100.0, 150.0, 200.0]


def extreme_batch():
    """Per row: a non-candidate ``gap`` logits above two candidates one logit apart, another far below."""
    z = torch.tensor([[g, 0.0, -1.0, -g] for g in GAPS])
    s = torch.tensor([[0.0, 1.0, 1.0, 0.0]]).repeat(len(GAPS), 1)
    return z, s


SPLIT = (1 / (1 + math.exp(-1.0)), math.exp(-1.0) / (1 + math.exp(-1.0)))  # 0.731 / 0.269 between the candidates


def test_restriction_is_exact_for_logit_gaps_up_to_200():
    z, s = extreme_batch()
    for out in (restrict_logits(z, s), restrict(torch.softmax(z.double(), dim=1), s)):
        assert torch.allclose(out.sum(dim=1).double(), torch.ones(len(GAPS), dtype=torch.float64), atol=1e-6)
        assert torch.allclose(out[:, 1:3].double(), torch.tensor([SPLIT] * len(GAPS), dtype=torch.float64), atol=1e-6)
        assert torch.all(out[:, [0, 3]] == 0)


@pytest.mark.parametrize("name", ["rc", "proden", "pop", "lws", "lwc", "cavl"])
def test_stored_confidences_are_exact_at_extreme_logits(name):
    z, s = extreme_batch()
    o = obj(name)
    state = o.init_confidence(s)
    o.update(state, torch.arange(len(GAPS)), z, s)
    inside, outside = (state * s).double(), (state * (1 - s)).double()
    ones = torch.ones(len(GAPS), dtype=torch.float64)
    assert torch.allclose(inside.sum(dim=1), ones, atol=1e-6), name
    if name == "cavl":
        assert torch.equal(state, F.one_hot(torch.ones(len(GAPS), dtype=torch.long), 4).float())
        return
    assert torch.allclose(inside[:, 1:3], torch.tensor([SPLIT] * len(GAPS), dtype=torch.float64), atol=1e-6), name
    if name in ("lws", "lwc"):  # the non-candidate part sums to one on its own
        assert torch.allclose(outside.sum(dim=1), ones, atol=1e-6), name
    else:
        assert torch.all(outside == 0), name


def test_alignment_target_is_exact_at_extreme_logits():
    """The mixed posterior goes through the same restriction (prob and logit mixing)."""
    from app.ml.alignment import mixed_posterior

    z, s = extreme_batch()
    for space in ("prob", "logit"):
        m = mixed_posterior(z, z, s, 0.5, space).double()
        assert torch.allclose(m.sum(dim=1), torch.ones(len(GAPS), dtype=torch.float64), atol=1e-6), space
        assert torch.allclose(m[:, 1:3], torch.tensor([SPLIT] * len(GAPS), dtype=torch.float64), atol=1e-6), space


def test_masked_softmax_edge_rows():
    scores = torch.tensor([[float("-inf"), float("-inf"), 0.0], [2.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # all candidates at -inf (probabilities that underflowed): uniform over the candidates; no candidate: zeros
    assert masked_softmax(scores, mask).tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]


# ---- references: update placement, POP's schedule, LWS's beta ------------------------------------


def test_update_timing_follows_the_references():
    after = {name for name in OBJECTIVES if obj(name).update_after_step}
    keeps = {name for name in OBJECTIVES if obj(name).keeps_confidence}
    assert after == {"rc", "lws", "lwc", "cavl"}
    assert keeps == {"rc", "proden", "lws", "lwc", "cavl", "pop"}


def test_pop_purifies_within_the_default_epochs():
    o = obj("pop")
    epochs = TrainConfig().epochs
    assert [e for e in range(epochs) if o.purifies_after(e)] == [10, 15]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w = torch.tensor([[0.9995, 0.0005, 0.0], [0.5, 0.5, 0.0]])  # 0.0005 / 0.9995 is below theta = 1e-3
    masks = []
    for epoch in range(epochs):
        mask = o.on_epoch_end(epoch, w, mask)
        masks.append(mask.clone())
    assert all(m.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]] for m in masks[:10])
    assert masks[10].tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert w.tolist() == [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]


def test_pop_schedule_counts_from_warmup_and_theta_stops_at_its_cap():
    o = obj("pop", pop={"warmup": 3, "interval": 5, "theta": 0.1, "theta_growth": 1.0})
    assert [e for e in range(20) if o.purifies_after(e)] == [3, 8, 13, 18]
    mask = torch.tensor([[1.0, 1.0]])
    w = torch.tensor([[0.6, 0.4]])  # never dropped: nothing changes, so theta grows at each purification
    thetas = []
    for epoch in range(20):
        o.on_epoch_end(epoch, w, mask)
        thetas.append(float(o.state["theta"]))
    # palm-ml/POP: theta grows only while below 0.4 (here doubling: 0.1 -> 0.2 -> 0.4, then it stays)
    assert thetas[3] == pytest.approx(0.2) and thetas[8] == pytest.approx(0.4) and thetas[-1] == pytest.approx(0.4)
    assert ObjectiveConfig().pop.theta_max == 0.4


def test_lws_is_the_papers_sigmoid_with_beta_one_and_lwc_keeps_the_log_form():
    cfg = ObjectiveConfig(name="lws")
    assert cfg.lws.beta == 1.0 and cfg.lwc.beta == 1.0
    z = torch.tensor([[3.0, -2.0, 0.5]])
    s = torch.tensor([[1.0, 0.0, 1.0]])
    w = torch.tensor([[0.5, 0.2, 0.3]])
    sig = 0.5 / (1 + math.exp(3.0)) + 0.3 / (1 + math.exp(0.5)) + 1.0 * 0.2 / (1 + math.exp(2.0))
    assert obj("lws").loss(z, s, w).item() == pytest.approx(sig, rel=1e-6)
    p = softmax_row([3.0, -2.0, 0.5])
    log_form = -0.5 * math.log(p[0]) - 0.3 * math.log(p[2]) - 1.0 * 0.2 * math.log(1 - p[1])
    assert obj("lwc").loss(z, s, w).item() == pytest.approx(log_form, rel=1e-5)


# ---- stored configs with the flat fields -------------------------------------------------------

FLAT_DEFAULTS = {
    "name": "proden",
    "naive_variant": "uniform",
    "lws_weight": 2.0,
    "lws_loss": "log",
    "pop_warmup": 20,
    "pop_window": 5,
    "pop_theta": 0.001,
    "pop_theta_growth": 0.001,
    "pop_theta_max": 0.01,
}


def test_stored_flat_configs_keep_validating_and_their_meaning():
    lws_log = ObjectiveConfig.model_validate(FLAT_DEFAULTS | {"name": "lws"})
    assert lws_log.name == "lwc" and lws_log.lwc.beta == 2.0  # the flat schema's LWS was the log form, beta 2
    assert obj_from(lws_log).loss(Z, S, torch.full((2, 3), 1 / 3)).item() == pytest.approx(
        obj("lwc", lwc={"beta": 2.0}).loss(Z, S, torch.full((2, 3), 1 / 3)).item(), rel=1e-7
    )
    sigmoid = ObjectiveConfig.model_validate({"name": "lws", "lws_loss": "sigmoid", "lws_weight": 1.5})
    assert sigmoid.name == "lws" and sigmoid.lws.beta == 1.5
    assert ObjectiveConfig.model_validate({"name": "lws", "lws_loss": "sigmoid"}).lws.beta == 2.0
    pop = ObjectiveConfig.model_validate(FLAT_DEFAULTS | {"name": "pop", "pop_warmup": 3, "naive_variant": "cc"})
    assert pop.pop == PopParams(warmup=3, window=5, theta=0.001, theta_growth=0.001, theta_max=0.01)
    assert pop.naive.variant == "cc"
    stored = CleanConfig().model_dump(mode="json")
    stored["objective"] = FLAT_DEFAULTS | {"name": "lws"}
    assert CleanConfig.model_validate(stored).objective.name == "lwc"
    # flags and API fields merged into a current config the same way (the flat field wins)
    assert CleanConfig().with_overrides(objective={"name": "pop", "pop_warmup": 2}).objective.pop.warmup == 2
    with pytest.raises(ValidationError, match="lws_loss must be 'log' or 'sigmoid'"):
        ObjectiveConfig.model_validate({"name": "lws", "lws_loss": "tanh"})
    with pytest.raises(ValidationError):
        ObjectiveConfig.model_validate({"name": "pop", "pop_window": 0})


# ---- one registry ------------------------------------------------------------------------------


def test_names_sections_cli_and_docs_derive_from_the_registry():
    from pathlib import Path

    from app.cli import parser

    names = tuple(spec.name for spec in OBJECTIVE_SPECS)
    assert names == OBJECTIVES
    assert tuple(ObjectiveConfig.model_json_schema()["properties"]["name"]["enum"]) == names
    sections = {spec.section for spec in OBJECTIVE_SPECS if spec.section}
    assert sections == set(ObjectiveConfig.model_fields) - {"name"}
    for name in names:
        o = obj(name)
        assert o.name == name and o.spec is SPECS_BY_NAME[name]
    clean = next(a for a in parser()._subparsers._group_actions if a.dest == "command").choices["clean"]
    action = next(a for a in clean._actions if a.dest == "objective")
    assert tuple(action.choices) == names and all(f"{n}: " in action.help for n in names)
    root = Path(__file__).resolve().parents[1]
    assert objectives_table() in (root / "docs" / "engine.md").read_text()
    assert f"| `objective.name` | `proden` | `{' '.join(names)}` |" in (root / "README.md").read_text()
