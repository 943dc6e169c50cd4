"""Annotators' votes as input: validation and the candidate policy that turns votes into a set.

An item may carry ``annotations: [{"annotator": "a1", "label": "coat"}, ...]``; an annotation
may be flagged ``"ground_truth": true`` (a reviewed label, as Label Studio's ground truth). The
dataset's :class:`CandidatePolicy` derives the candidate set from them:

- default: the union of the annotators' labels, in first-vote order;
- ``min_votes``: only the labels at least that many annotators gave;
- ``ground_truth_wins`` (on by default): when an item has ground-truth annotations, their
  label(s) alone are the set, whatever the votes.

When an item gives both ``candidates`` and ``annotations``, the explicit candidates are the set
and the annotations are kept as evidence (validated all the same).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.ml.data import InputError
from app.ml.text import show, text_problem

MAX_ANNOTATIONS = 1000
MAX_ANNOTATOR = 255
KEYS = {"annotator", "label", "ground_truth"}


class CandidatePolicy(BaseModel):
    """How a dataset turns an item's annotations into its candidate set."""

    model_config = ConfigDict(extra="forbid")
    min_votes: int = Field(
        1, ge=1, le=MAX_ANNOTATIONS, description="a label enters the set when at least this many annotators gave it"
    )
    ground_truth_wins: bool = Field(
        True, description="an annotation flagged ground_truth decides the set alone (the votes stay as evidence)"
    )


def validate_annotations(item: str, annotations: object, class_index: dict[str, int]) -> list[dict]:
    """The item's annotations as stored (``{annotator, label}`` plus ``ground_truth: true`` where
    set), or InputError naming the item and the annotator."""
    if not isinstance(annotations, list):
        raise InputError(f"{item}: 'annotations' must be a list of {{annotator, label}} objects")
    if not annotations:
        raise InputError(f"{item}: 'annotations' is empty")
    if len(annotations) > MAX_ANNOTATIONS:
        raise InputError(f"{item}: {len(annotations)} annotations, over the limit of {MAX_ANNOTATIONS}")
    out: list[dict] = []
    seen: set[str] = set()
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise InputError(f"{item}: annotation {n} is {show(ann)}, not an {{annotator, label}} object")
        extra = sorted(str(k) for k in ann.keys() - KEYS)
        if extra:
            raise InputError(f"{item}: annotation {n} has unknown field {show(extra[0])}")
        who = ann.get("annotator")
        if not isinstance(who, str) or not who or len(who) > MAX_ANNOTATOR:
            raise InputError(
                f"{item}: annotation {n}: 'annotator' must be a non-empty string of at most 255 characters"
            )
        problem = text_problem(who)
        if problem is not None:
            raise InputError(f"{item}: annotation {n}: 'annotator' {problem}")
        if who in seen:
            raise InputError(f"{item}: annotator {show(who)} appears more than once")
        seen.add(who)
        label = ann.get("label")
        if not isinstance(label, str):
            raise InputError(f"{item}: annotator {show(who)}: label is {show(label)}, not a class name")
        if label not in class_index:
            raise InputError(f"{item}: annotator {show(who)}: label {show(label)} is not among the classes")
        truth = ann.get("ground_truth", False)
        if not isinstance(truth, bool):
            raise InputError(f"{item}: annotator {show(who)}: 'ground_truth' must be true or false")
        out.append({"annotator": who, "label": label} | ({"ground_truth": True} if truth else {}))
    return out


def derive_candidates(item: str, annotations: list[dict], policy: CandidatePolicy) -> list[str]:
    """The candidate set the policy derives from validated annotations, or InputError naming the
    item when it leaves the set empty."""
    if policy.ground_truth_wins:
        truth = [a["label"] for a in annotations if a.get("ground_truth")]
        if truth:
            return list(dict.fromkeys(truth))
    votes: dict[str, int] = {}
    for a in annotations:
        votes[a["label"]] = votes.get(a["label"], 0) + 1
    out = [label for label, n in votes.items() if n >= policy.min_votes]
    if not out:
        raise InputError(
            f"{item}: no label has the {policy.min_votes} votes the dataset's policy asks for "
            f"(most: {max(votes.values())}); the candidate set would be empty"
        )
    return out


def agreed(annotations: list[dict] | None, label: str) -> list[str]:
    """The annotators whose label is ``label``."""
    return [a["annotator"] for a in annotations or () if a.get("label") == label]
