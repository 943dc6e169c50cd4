"""Per-item outputs: the label Candor believes in, how sure it is, and flags.

For item i with candidate set S_i and the adapted model's posterior p over all K classes:

* ``posterior``: p restricted to S_i and renormalised (sums to one over the candidates);
* ``label`` / ``confidence``: the top candidate and its restricted probability;
* ``margin``: confidence minus the runner-up's restricted probability (1.0 for |S| = 1);
* ``outside_mass``: 1 - sum_{k in S_i} p_k, the model's mass outside the candidate set;
* ``ambiguous``: margin < ``output.ambiguous_margin`` (default 0.2);
* ``candidates_suspect``: outside_mass > ``output.suspect_outside_mass`` (default 0.8): the model
  puts most of its belief on labels outside the candidate set.

Everything is computed from the log-posterior (or the logits) in log space: the restriction is a
softmax over the candidates with every other class at -inf, and the outside mass a logsumexp over
the non-candidates. So the results stay exact where the candidates' probabilities are far below
float precision (a prior 200 logits above the candidates still gives the right split among them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from app.ml.config import OutputConfig
from app.ml.objectives import require_candidates, restrict_logits


@dataclass(frozen=True)
class ItemResult:
    id: str
    label: str
    confidence: float
    posterior: dict[str, float]
    margin: float
    outside_mass: float
    ambiguous: bool
    candidates_suspect: bool
    prior_label: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def item_results(
    ids: Sequence[str],
    classes: Sequence[str],
    log_posterior: torch.Tensor,
    mask: torch.Tensor,
    cfg: OutputConfig,
    prior_log_posterior: torch.Tensor | None = None,
) -> list[ItemResult]:
    """Per-item results from the (N, K) log-posterior (or logits: rows are renormalised first).

    ``prior_log_posterior`` adds the zero-shot prior's choice within the candidates. A row with no
    candidate raises ValueError naming the row.
    """
    logp = torch.log_softmax(log_posterior.double(), dim=1)
    m = mask.double()
    restricted = restrict_logits(logp, m)
    outside = torch.logsumexp(logp.masked_fill(m > 0, float("-inf")), dim=1).exp()
    top2 = restricted.topk(min(2, restricted.shape[1]), dim=1)
    prior = None if prior_log_posterior is None else choice_within(prior_log_posterior, m).tolist()
    out = []
    for i, item_id in enumerate(ids):
        cand = m[i].nonzero().flatten().tolist()
        best = int(top2.indices[i, 0])
        conf = float(top2.values[i, 0])
        runner = float(top2.values[i, 1]) if len(cand) > 1 else 0.0
        margin = conf - runner
        om = float(outside[i])
        out.append(
            ItemResult(
                id=item_id,
                label=classes[best],
                confidence=round(conf, 6),
                posterior={classes[c]: round(float(restricted[i, c]), 6) for c in cand},
                margin=round(margin, 6),
                outside_mass=round(om, 6),
                ambiguous=margin < cfg.ambiguous_margin,
                candidates_suspect=om > cfg.suspect_outside_mass,
                prior_label=None if prior is None else classes[prior[i]],
            )
        )
    return out


def choice_within(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the best candidate for each row, by any increasing score of the posterior:
    probabilities, log-probabilities or logits (pass one of the last two where probabilities may
    underflow to zero). A row with no candidate raises ValueError naming the row."""
    require_candidates(mask)
    return scores.double().masked_fill(mask <= 0, float("-inf")).argmax(dim=1)
