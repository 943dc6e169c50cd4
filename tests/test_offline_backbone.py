"""The offline dual encoder: real pretrained parts, soft prompts through MiniLM, a weak real prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.backbones import handcrafted_features
from app.ml.datasets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist

CLASSES = ["T-shirt/top", "ankle_boot", "bag"]


def test_prompt_path_equals_sentence_transformers(offline):
    ctx = offline.context_init("a photo of a", 16, torch.Generator().manual_seed(0))
    assert ctx.shape == (4, offline.ctx_dim)
    ours = offline.prompt_encoder(CLASSES, ctx.shape[0])(ctx)
    reference = offline.sentence_model.encode(
        [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES], convert_to_tensor=True
    )
    assert torch.allclose(ours, reference.cpu(), atol=1e-5)


def test_padding_is_inert(offline):
    ctx = torch.randn(8, offline.ctx_dim, generator=torch.Generator().manual_seed(3)) * 0.02
    alone = offline.prompt_encoder(["bag"], 8)(ctx)
    together = offline.prompt_encoder(["bag", "a very long class name indeed"], 8)(ctx)[:1]
    assert torch.allclose(alone, together, atol=1e-5)


def test_image_features_are_normalised_and_real(offline):
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg
    feats = offline.encode_images(photos)
    assert feats.shape == (2, offline.embed_dim)
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)
    text = offline.encode_texts(["a photo of a daisy.", "a photo of a palace."])
    sims = feats @ text.T
    assert sims[1, 0] > sims[1, 1] and sims[0, 1] > sims[0, 0]  # flower -> daisy, china -> palace


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs Debian dataset-fashion-mnist (make data)")
def test_zero_shot_prior_beats_chance_on_fashion_mnist(offline):
    images, labels = load_fashion_mnist("test")
    idx = np.random.default_rng(0).choice(len(labels), 300, replace=False)
    pil = [Image.fromarray(images[i]) for i in idx]
    feats = torch.cat([offline.encode_images(pil[i : i + 100], view="invert") for i in range(0, 300, 100)])
    prior = handcrafted_features(offline, FASHION_MNIST_CLASSES, ["a photo of a {}."])
    acc = float(((feats @ prior.T).argmax(dim=1).numpy() == labels[idx]).mean())
    assert 0.18 < acc < 0.6  # weak but real: chance is 0.10
