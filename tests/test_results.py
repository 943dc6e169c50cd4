from __future__ import annotations

import pytest
import torch

from app.ml.config import OutputConfig
from app.ml.results import item_results


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
    out = item_results(["a", "b", "c", "d"], ["x", "y", "z"], post, mask, OutputConfig(), prior_posterior=post)
    a, b, c, d = out
    assert a.label == "x" and a.confidence == pytest.approx(0.7 / 0.9, abs=1e-6)
    assert a.posterior == pytest.approx({"x": 0.7 / 0.9, "y": 0.2 / 0.9}, abs=1e-6)
    assert a.margin == pytest.approx(0.5 / 0.9, abs=1e-6) and not a.ambiguous
    assert a.outside_mass == pytest.approx(0.1, abs=1e-6) and not a.candidates_suspect
    assert b.ambiguous and not b.candidates_suspect
    assert c.candidates_suspect and c.outside_mass == pytest.approx(0.9, abs=1e-6)
    assert d.label == "y" and d.confidence == 1.0 and d.margin == 1.0 and not d.ambiguous
    assert set(d.posterior) == {"y"} and d.prior_label == "y"
    strict = item_results(["a"], ["x", "y", "z"], post[:1], mask[:1], OutputConfig(ambiguous_margin=0.9))
    assert strict[0].ambiguous
