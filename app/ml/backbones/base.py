"""The small protocol every backbone implements.

A backbone is a frozen dual encoder. The engine needs from it:

* ``id``: a string that names the weights exactly (used as the feature-cache key and stored in
  every classifier artifact);
* ``encode_images``: L2-normalised image features for a batch of PIL images in a given view;
* ``encode_texts``: L2-normalised text features of plain prompts (the handcrafted prior);
* ``context_init``: initial context vectors, from words or random;
* ``prompt_encoder``: a module that maps the learnable context to the K class text features,
  with every frozen part (token embeddings of the class names, masks, pooling positions)
  prepared once;
* ``logit_scale``: the fixed multiplier of cosine similarities (CLIP's exp(t) = 100).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from PIL import Image, ImageOps


class BackboneUnavailable(RuntimeError):
    """The weights a backbone needs cannot be had on this machine."""


@runtime_checkable
class PromptEncoder(Protocol):
    n_ctx: int
    seq_len: int

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Backbone(Protocol):
    spec: str
    id: str
    embed_dim: int
    ctx_dim: int
    logit_scale: float
    device: torch.device

    def encode_images(self, images: Sequence[Image.Image], view: str = "plain") -> torch.Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...

    def context_init(self, words: str | None, n_ctx: int, generator: torch.Generator) -> torch.Tensor: ...

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int) -> PromptEncoder: ...


def apply_view(image: Image.Image, view: str) -> Image.Image:
    """The image as the image tower sees it: RGB, and inverted for the 'invert' view."""
    rgb = image.convert("RGB")
    if view == "plain":
        return rgb
    if view == "invert":
        return ImageOps.invert(rgb)
    raise ValueError(f"unknown image view {view!r}; expected 'plain' or 'invert'")


def short(text: str, limit: int = 40) -> str:
    """A long name for a message: its first ``limit`` characters and its length."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def clean_classname(name: str) -> str:
    """Class names as they go into prompts: underscores become spaces (CoOp convention)."""
    return name.replace("_", " ").strip()


@torch.no_grad()
def handcrafted_features(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Zero-shot class features: each class's template features averaged, then re-normalised."""
    per_template = []
    for template in templates:
        texts = [template.format(clean_classname(c)) for c in classnames]
        per_template.append(backbone.encode_texts(texts))
    mean = torch.stack(per_template).mean(dim=0)
    return torch.nn.functional.normalize(mean, dim=-1)
