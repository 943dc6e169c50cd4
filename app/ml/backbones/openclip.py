"""open_clip backbones: any open_clip model with a pretrained tag, a local checkpoint, or random init.

The prompt path wraps open_clip's own text modules (token embedding, positional embedding,
transformer, ln_final, projection) for both ``CLIP`` (modules on the model) and ``CustomTextCLIP``
(modules under ``model.text``). Prompts run at the length of the longest tokenised prompt: for a
causally masked tower pooled at the end-of-text token nothing after that token can influence the
pooled feature, so the truncation is exact (proved by ``tests/test_openclip_backbone.py``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from app.ml.backbones.base import BackboneUnavailable, apply_view, clean_classname, short

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
TINY_MODEL = "candor-tiny"
RANDOM_TAGS = (None, "", "random", "none")
FILE_PREFIX = "file:"
_registered = False


def checkpoint_file(pretrained: str | None) -> Path | None:
    """The local checkpoint a spec's third part names, or None for a pretrained tag.

    A checkpoint is an absolute path (``/models/ckpt.pt``) or carries the prefix ``file:``
    (``file:ckpt.pt``, relative to the working directory); anything else is a pretrained tag. The
    rule depends on the string alone, never on which files exist on the machine.
    """
    if not pretrained:
        return None
    if pretrained.startswith(FILE_PREFIX):
        return Path(pretrained[len(FILE_PREFIX) :])
    if pretrained.startswith("/"):
        return Path(pretrained)
    return None


def unknown_tag(model_name: str, tag: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    known = f"known tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
    return (
        f"unknown pretrained tag {tag!r} for open_clip model {model_name!r} ({known}); "
        "a local checkpoint is an absolute path or file:PATH"
    )


def register_model_configs() -> None:
    """Make Candor's own open_clip configs (the tiny test model) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _TextTower:
    """The frozen text modules of an open_clip model, found on ``CLIP`` or ``CustomTextCLIP``."""

    def __init__(self, model: nn.Module):
        owner = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        if owner is None or not hasattr(owner, "token_embedding") or not hasattr(owner, "transformer"):
            raise BackboneUnavailable(
                f"{type(model).__name__} has no open_clip text transformer (Hugging Face text towers are "
                "not supported for prompt learning); choose a CLIP model with a native text tower"
            )
        if getattr(owner, "cls_emb", None) is not None:
            raise BackboneUnavailable("text towers with a class embedding are not supported for prompt learning")
        self.token_embedding = owner.token_embedding
        self.positional_embedding = owner.positional_embedding
        self.transformer = owner.transformer
        self.attn_mask = getattr(owner, "attn_mask", None)
        self.ln_final = owner.ln_final
        self.text_projection = owner.text_projection
        self.pool_type = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))
        self.context_length = self.positional_embedding.shape[0]

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)

    def run(self, embeds: torch.Tensor, pool_idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, W) -> projected pooled features (B, D), unnormalised."""
        length = embeds.shape[1]
        x = embeds + self.positional_embedding[:length].to(embeds.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool_idx]
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _prompt_ids(tower: _TextTower, tokenizer, classnames: Sequence[str], n_ctx: int) -> torch.Tensor:
    placeholder = " ".join(["X"] * n_ctx)
    return tokenizer([f"{placeholder} {clean_classname(c)}." for c in classnames])


def _exact(tower: _TextTower) -> bool:
    """Whether prompts can be cut after the pooled token (causal mask, pooled at a fixed token)."""
    return tower.attn_mask is not None and tower.pool_type in ("argmax", "eos", "first")


def _overflow(tower: _TextTower, ids: torch.Tensor, pool_idx: torch.Tensor) -> int | None:
    """Row of the first prompt whose end-of-text token was cut off by the context length."""
    if _exact(tower) and ids.shape[0] and int(pool_idx.max()) >= ids.shape[1] - 1:
        return int(pool_idx.argmax())
    return None


def _too_long(name: str, n_ctx: int, tower: _TextTower) -> str:
    return (
        f"class name {short(name)} is too long: with {n_ctx} context tokens its prompt does not fit the text "
        f"tower's {tower.context_length} tokens"
    )


class OpenClipPromptEncoder(nn.Module):
    """CoOp prompts ``[SOS][V1]..[VM][CLASS][.][EOS]`` for K classes, at the truncated length."""

    def __init__(self, tower: _TextTower, tokenizer, classnames: Sequence[str], n_ctx: int):
        super().__init__()
        self.tower = tower
        self.n_ctx = n_ctx
        ids = _prompt_ids(tower, tokenizer, classnames, n_ctx).to(tower.token_embedding.weight.device)
        pool_idx = tower.pool_index(ids)
        row = _overflow(tower, ids, pool_idx)
        if row is not None:
            raise ValueError(_too_long(classnames[row], n_ctx, tower))
        self.seq_len = int(pool_idx.max()) + 1 if _exact(tower) else ids.shape[1]
        with torch.no_grad():
            embeds = tower.token_embedding(ids[:, : self.seq_len])
        self.register_buffer("prefix", embeds[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embeds[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("pool_idx", pool_idx, persistent=False)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        k = self.prefix.shape[0]
        ctx = ctx.unsqueeze(0).expand(k, -1, -1).to(self.prefix.dtype)
        embeds = torch.cat([self.prefix, ctx, self.suffix], dim=1)
        return F.normalize(self.tower.run(embeds, self.pool_idx), dim=-1)


class OpenClipBackbone:
    """An open_clip model, frozen, in eval mode."""

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ):
        register_model_configs()
        self.device = torch.device(device)
        if model_name not in open_clip.list_models():
            raise BackboneUnavailable(
                f'unknown open_clip model {model_name!r}; `python -c "import open_clip; '
                'print(open_clip.list_models())"` lists the known names'
            )
        file = checkpoint_file(pretrained)
        if pretrained in RANDOM_TAGS:
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
            weights = f"random-seed{seed}"
        elif file is not None:
            if not file.is_file():
                raise BackboneUnavailable(f"checkpoint file {file} does not exist")
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(file))
            weights = f"file-sha256-{file_digest(file)[:16]}"
        else:
            if not open_clip.get_pretrained_cfg(model_name, pretrained):
                # open_clip would take an unknown tag for a file path; Candor never does.
                raise BackboneUnavailable(unknown_tag(model_name, pretrained))
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
            except Exception as exc:
                raise BackboneUnavailable(
                    f"cannot load pretrained weights {pretrained!r} for open_clip model {model_name!r} "
                    f"({type(exc).__name__}: {exc}). Either run where the model hub is reachable so open_clip "
                    f"can download them, or pass a local checkpoint file: "
                    f"--backbone openclip:{model_name}:/path/to/checkpoint.pt (or file:PATH)"
                ) from exc
            weights = pretrained
        model.eval().requires_grad_(False).to(self.device)
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.tower = _TextTower(model)
        self.model_name = model_name
        self.spec = f"openclip:{model_name}:{pretrained}" if pretrained else f"openclip:{model_name}"
        self.id = f"openclip:{model_name}:{weights}:open_clip-{open_clip.__version__}"
        self.embed_dim = int(self.encode_texts(["a"]).shape[1])
        self.ctx_dim = int(self.tower.token_embedding.weight.shape[1])
        self.logit_scale = float(model.logit_scale.exp()) if pretrained not in RANDOM_TAGS else 100.0

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], view: str = "plain") -> torch.Tensor:
        batch = torch.stack([self.preprocess(apply_view(im, view)) for im in images]).to(self.device)
        return self.model.encode_image(batch, normalize=True).float()

    def image_batch(self, images: Sequence[Image.Image], view: str = "plain") -> torch.Tensor:
        return torch.stack([self.preprocess(apply_view(im, view)) for im in images]).to(self.device)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(ids, normalize=True).float()

    def context_init(self, words: str | None, n_ctx: int, generator: torch.Generator) -> torch.Tensor:
        if words:
            ids = self.tokenizer([words])
            if _overflow(self.tower, ids, self.tower.pool_index(ids)) is not None:
                raise ValueError(f"prompt.ctx_init is too long for the text tower's {self.tower.context_length} tokens")
            ids = ids[0]
            n_words = int(self.tower.pool_index(ids.unsqueeze(0))[0]) - 1
            with torch.no_grad():
                return self.tower.token_embedding(ids[1 : 1 + n_words].to(self.device)).float().clone()
        return torch.randn(n_ctx, self.ctx_dim, generator=generator) * 0.02

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int) -> OpenClipPromptEncoder:
        return OpenClipPromptEncoder(self.tower, self.tokenizer, classnames, n_ctx)


@functools.lru_cache(maxsize=8)
def text_side(model_name: str) -> tuple[_TextTower, object]:
    """The text tower's structure and the tokenizer of an open_clip model, without any weights.

    The model is built on the ``meta`` device (no memory, no download; under two seconds for the
    largest open_clip models), so the same ``_TextTower`` and tokenizer the workers use decide
    what fits. Raises BackboneUnavailable for models whose text tower prompt learning cannot use.
    """
    register_model_configs()
    cfg = open_clip.get_model_config(model_name) or {}
    text_cfg = cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name"):
        raise BackboneUnavailable(
            f"open_clip model {model_name!r} has a Hugging Face text tower, which prompt learning does not support; "
            "choose a CLIP model with a native text tower"
        )
    if text_cfg.get("hf_tokenizer_name"):
        raise LookupError(f"open_clip model {model_name!r} needs a Hugging Face tokenizer")
    with torch.device("meta"):
        model = open_clip.create_model(model_name, pretrained=None, device="meta", pretrained_text=False)
    return _TextTower(model), open_clip.get_tokenizer(model_name)


def check_prompts(model_name: str, classnames: Sequence[str], n_ctx: int, ctx_init: str | None) -> None:
    """Raise ValueError when the worker's prompts for these classes would not fit the text tower.

    Uses the workers' own tokenizer and overflow rule on a weightless copy of the tower. Models
    whose tokenizer needs a download are not checked here (LookupError is swallowed).
    """
    try:
        tower, tokenizer = text_side(model_name)
    except LookupError:
        return
    if ctx_init:
        ids = tokenizer([ctx_init])
        pool_idx = tower.pool_index(ids)
        if _overflow(tower, ids, pool_idx) is not None:
            raise ValueError(
                f"prompt.ctx_init is too long: it alone does not fit the text tower's {tower.context_length} tokens"
            )
        n_ctx = int(pool_idx[0]) - 1
    if not classnames:
        return
    ids = _prompt_ids(tower, tokenizer, classnames, n_ctx)
    row = _overflow(tower, ids, tower.pool_index(ids))
    if row is not None:
        hint = "shorten prompt.ctx_init" if ctx_init else "lower prompt.n_ctx"
        raise ValueError(f"{_too_long(classnames[row], n_ctx, tower)}; shorten the class name or {hint}")


# Registry hooks (app/ml/backbones/registry.py) for the kinds 'openclip:MODEL[:WEIGHTS]' and 'tiny'.


def load_spec(
    model_name: str,
    weights: str | None,
    device: str | torch.device = "cpu",
    checkpoint_dirs: Sequence[str | os.PathLike] | None = None,
) -> OpenClipBackbone:
    """``checkpoint_dirs`` (a service's setting) limits checkpoint files to those directories,
    symlinks and ``..`` resolved; None (local use) accepts any file."""
    from app.ml.backbones.registry import allowed_checkpoint

    file = checkpoint_file(weights)
    if file is not None and checkpoint_dirs is not None:
        try:
            real = allowed_checkpoint(file, checkpoint_dirs)
        except ValueError as exc:
            raise BackboneUnavailable(str(exc)) from None
        backbone = OpenClipBackbone(model_name, str(real), device=device)
        backbone.spec = f"openclip:{model_name}:{weights}"
        return backbone
    return OpenClipBackbone(model_name, weights, device=device)


def load_tiny(model: str | None, weights: str | None, device: str | torch.device = "cpu", checkpoint_dirs=None):
    backbone = OpenClipBackbone(TINY_MODEL, None, device=device)
    backbone.spec = "tiny"
    return backbone


def check_spec(model_name: str, weights: str | None, checkpoint_dirs: Sequence[str | os.PathLike]) -> None:
    """ValueError for what ``load_spec`` would refuse for a reason known now: an unknown model or
    pretrained tag, a text tower prompt learning cannot use, a checkpoint outside
    ``checkpoint_dirs`` or missing. Loads no weights."""
    from app.ml.backbones.registry import allowed_checkpoint

    register_model_configs()
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; open_clip.list_models() lists the known names")
    file = checkpoint_file(weights)
    if file is not None:
        if not allowed_checkpoint(file, checkpoint_dirs).is_file():
            raise ValueError(f"checkpoint file {str(file)!r} does not exist")
    elif weights not in RANDOM_TAGS and not open_clip.get_pretrained_cfg(model_name, weights):
        raise ValueError(unknown_tag(model_name, weights))
    try:
        text_side(model_name)
    except BackboneUnavailable as exc:
        raise ValueError(str(exc)) from None
    except LookupError:
        pass


def check_tiny_prompts(model: str | None, classnames: Sequence[str], n_ctx: int, ctx_init: str | None) -> None:
    check_prompts(TINY_MODEL, classnames, n_ctx, ctx_init)
