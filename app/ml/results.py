"""Per-item outputs: the label Candor believes in, how sure it is, and flags.

For item i with candidate set S_i and the adapted model's posterior p over all K classes:

* ``posterior``: p restricted to S_i and renormalised (sums to one over the candidates);
* ``label`` / ``confidence``: the top candidate and its restricted probability;
* ``margin``: confidence minus the runner-up's restricted probability (1.0 for |S| = 1);
* ``outside_mass``: 1 - sum_{k in S_i} p_k, the model's mass outside the candidate set;
* ``ambiguous``: margin < ``output.ambiguous_margin`` (default 0.2);
* ``candidates_suspect``: outside_mass > ``output.suspect_outside_mass`` (default 0.8): the model
  puts most of its belief on labels outside the candidate set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from app.ml.config import OutputConfig
from app.ml.objectives import restrict


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
    posterior: torch.Tensor,
    mask: torch.Tensor,
    cfg: OutputConfig,
    prior_posterior: torch.Tensor | None = None,
) -> list[ItemResult]:
    """Per-item results; ``prior_posterior`` adds the zero-shot prior's choice within the candidates."""
    post = posterior.double()
    m = mask.double()
    restricted = restrict(post, m)
    outside = (1.0 - (post * m).sum(dim=1)).clamp_min(0.0)
    top2 = restricted.topk(min(2, restricted.shape[1]), dim=1)
    prior = None if prior_posterior is None else choice_within(prior_posterior, m).tolist()
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


def choice_within(posterior: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the most probable candidate for each row."""
    return restrict(posterior.double(), mask.double()).argmax(dim=1)
