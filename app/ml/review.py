"""The review queue's order: which items a person should look at first.

A reviewer's answer helps twice: it fixes the item itself (when Candor's label was wrong, or the
whole candidate set was), and, through the next job, it teaches the prompt about the pair of
classes the item sat between. The expected benefit of reviewing item i estimates both from the
label rows alone (no true labels):

    benefit_i = (1 - confidence_i) * (1 + confusion(label_i, runner_up_i)) + outside_mass_i * suspect_i

* ``1 - confidence`` is the chance, by the model's own posterior over the candidates, that the
  chosen label is wrong: what a truthful answer fixes on the item;
* ``confusion(a, b)`` in [0, 1] is how much posterior mass the whole job leaves undecided between
  classes a and b: for every item, the runner-up's share of the pair it is torn between, summed
  per unordered pair, divided by the largest pair's sum. An answer on a pair that confuses many
  items weighs up to twice as much, because the next job learns that pair from it;
* ``outside_mass * suspect``: when the model believes the true label lies outside the candidate
  set (``candidates_suspect``), a "none of these" answer fixes what no choice inside the set can.

Ties break by the smaller margin, then by the row's position (upload order). Items with one
candidate and no suspicion score zero: nothing to resolve.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReviewRow:
    """What the queue needs of a label row."""

    label: str
    confidence: float
    posterior: dict[str, float]
    margin: float
    outside_mass: float
    candidates_suspect: bool


def review_row(result) -> ReviewRow:
    """The queue's view of a label row: an engine ItemResult or a stored result (duck-typed)."""
    return ReviewRow(
        result.label,
        result.confidence,
        result.posterior,
        result.margin,
        result.outside_mass,
        result.candidates_suspect,
    )


def runner_up(row: ReviewRow) -> str | None:
    """The second most probable candidate (None for a set of one)."""
    others = sorted(((p, c) for c, p in row.posterior.items() if c != row.label), reverse=True)
    return others[0][1] if others else None


def pair_confusion(rows: Iterable[ReviewRow]) -> dict[frozenset[str], float]:
    """Per unordered pair of classes, the runner-up mass the job leaves between them, scaled so the
    most confused pair is 1.0."""
    mass: dict[frozenset[str], float] = {}
    for row in rows:
        other = runner_up(row)
        if other is None:
            continue
        pair = frozenset((row.label, other))
        mass[pair] = mass.get(pair, 0.0) + float(row.posterior[other])
    top = max(mass.values(), default=0.0)
    return {p: m / top for p, m in mass.items()} if top > 0 else {}


def benefit(row: ReviewRow, confusion: dict[frozenset[str], float]) -> float:
    """The expected benefit of a review of this row (see the module's docstring)."""
    other = runner_up(row)
    pair = confusion.get(frozenset((row.label, other)), 0.0) if other is not None else 0.0
    wrong = (1.0 - float(row.confidence)) if other is not None else 0.0
    return wrong * (1.0 + pair) + (float(row.outside_mass) if row.candidates_suspect else 0.0)


def review_order(rows: Sequence[ReviewRow]) -> list[tuple[int, float]]:
    """(row index, benefit) of every row, most beneficial first; ties by margin, then position."""
    confusion = pair_confusion(rows)
    scored = [(i, benefit(r, confusion)) for i, r in enumerate(rows)]
    return sorted(scored, key=lambda t: (-t[1], float(rows[t[0]].margin), t[0]))


def ranks(rows: Sequence[ReviewRow]) -> list[tuple[int, float]]:
    """(rank from 1, benefit) of each row, in the rows' order: what a job stores with its results,
    so that the queue and the labels' ``order=review`` read one index instead of re-ranking."""
    out: list[tuple[int, float]] = [(0, 0.0)] * len(rows)
    for rank, (i, score) in enumerate(review_order(rows), start=1):
        out[i] = (rank, score)
    return out
