"""The open_clip prompt path: golden test against encode_text, exact truncation, local checkpoints."""

from __future__ import annotations

import open_clip
import pytest
import torch

from app.ml.backbones import BackboneUnavailable, load_backbone, parse_spec
from app.ml.backbones.openclip import OpenClipBackbone, register_model_configs

CLASSES = ["cat", "ankle_boot", "T-shirt/top", "a rather long class name with several words"]


def test_golden_prompt_path_equals_encode_text(tiny):
    ctx = tiny.context_init("a photo of a", 16, torch.Generator().manual_seed(0))
    assert ctx.shape[0] == 4
    encoder = tiny.prompt_encoder(CLASSES, ctx.shape[0])
    ours = encoder(ctx)
    tokens = open_clip.get_tokenizer("candor-tiny")([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    with torch.no_grad():
        reference = tiny.model.encode_text(tokens, normalize=True)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert encoder.seq_len < 77


def test_truncation_is_exact_for_random_context(tiny):
    ctx = torch.randn(16, tiny.ctx_dim, generator=torch.Generator().manual_seed(1))
    encoder = tiny.prompt_encoder(CLASSES, 16)
    truncated = encoder(ctx)
    # The same prompts at the full padded length of 77.
    ids = tiny.tokenizer([f"{' '.join(['X'] * 16)} {c.replace('_', ' ')}." for c in CLASSES])
    with torch.no_grad():
        full = tiny.tower.token_embedding(ids)
    full = torch.cat([full[:, :1], ctx.unsqueeze(0).expand(len(CLASSES), -1, -1), full[:, 17:]], dim=1)
    padded = torch.nn.functional.normalize(tiny.tower.run(full, tiny.tower.pool_index(ids)), dim=-1)
    assert full.shape[1] == 77 and encoder.seq_len == int(ids.argmax(dim=1).max()) + 1
    assert torch.allclose(truncated, padded, atol=1e-5)


def test_context_gets_gradients_and_tower_is_frozen(tiny):
    ctx = torch.nn.Parameter(torch.randn(4, tiny.ctx_dim) * 0.02)
    tiny.prompt_encoder(CLASSES, 4)(ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in tiny.model.parameters())


def test_class_name_too_long_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="too long"):
        tiny.prompt_encoder(["word " * 80], 16)


def test_checkpoint_round_trip_through_local_file(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = OpenClipBackbone("candor-tiny", str(path))
    assert "file-sha256-" in loaded.id and loaded.id != tiny.id
    texts = ["a photo of a cat.", "a photo of a dog."]
    assert torch.allclose(loaded.encode_texts(texts), tiny.encode_texts(texts), atol=1e-6)
    from tests.helpers import color_image

    ims = [color_image(1), color_image(2)]
    assert torch.allclose(loaded.encode_images(ims), tiny.encode_images(ims), atol=1e-5)
    # the spec form the CLI and API use reaches the same weights
    via_spec = load_backbone(f"openclip:candor-tiny:{path}")
    assert via_spec.id == loaded.id


def test_missing_pretrained_weights_name_both_remedies(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    register_model_configs()
    with pytest.raises(BackboneUnavailable) as err:
        OpenClipBackbone("RN50", "openai")  # a known tag whose weights are not cached here
    msg = str(err.value)
    assert "model hub is reachable" in msg and "local checkpoint" in msg and "RN50" in msg


def test_unknown_model_and_bad_spec():
    with pytest.raises(BackboneUnavailable, match="unknown open_clip model"):
        load_backbone("openclip:NoSuchModel-B-99")
    with pytest.raises(ValueError, match="unknown backbone"):
        parse_spec("clip-ish")
    assert parse_spec("openclip:ViT-B-32:laion2b_s34b_b79k") == ("openclip", "ViT-B-32", "laion2b_s34b_b79k")
    assert parse_spec("openclip:ViT-B-32:/models/a:b.pt") == ("openclip", "ViT-B-32", "/models/a:b.pt")


def test_ids_name_weights_exactly(tiny):
    again = load_backbone("tiny")
    assert again.id == tiny.id
    assert torch.equal(again.encode_texts(["a photo of a cat."]), tiny.encode_texts(["a photo of a cat."]))
    assert "random-seed0" in tiny.id and open_clip.__version__ in tiny.id
