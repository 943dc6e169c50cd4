from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from app.ml.features import (
    ImageError,
    ImageRef,
    MemoryFeatureStore,
    SqliteFeatureStore,
    decode_image,
    featurize,
    sha256_bytes,
)
from tests.helpers import color_image


class CountingBackbone:
    """Wraps a backbone and counts images sent through the image tower."""

    def __init__(self, inner):
        self.inner = inner
        self.id = inner.id
        self.seen = 0

    def encode_images(self, images, view="plain"):
        self.seen += len(images)
        return self.inner.encode_images(images, view=view)


def refs(n, dup_every=None):
    out = []
    for i in range(n):
        seed = i if not dup_every else i % dup_every
        buf = io.BytesIO()
        color_image(seed).save(buf, format="PNG")
        data = buf.getvalue()
        out.append(ImageRef(label=f"item {i}", sha256=sha256_bytes(data), load=lambda d=data: decode_image(d, "x")))
    return out


def test_features_computed_once_per_hash_backbone_and_view(tiny):
    store = MemoryFeatureStore()
    counting = CountingBackbone(tiny)
    items = refs(10, dup_every=4)  # 4 distinct images
    first = featurize(counting, items, store)
    assert counting.seen == 4 and first.shape == (10, tiny.embed_dim)
    assert torch.equal(first[0], first[4])
    again = featurize(counting, items, store)
    assert counting.seen == 4 and torch.equal(first, again)
    featurize(counting, items, store, view="invert")
    assert counting.seen == 8  # another view is another key
    direct = tiny.encode_images([r.load() for r in items[:4]])
    assert torch.allclose(first[:4], direct, atol=1e-6)


def test_sqlite_store_round_trip(tmp_path, tiny):
    path = tmp_path / "f.sqlite"
    store = SqliteFeatureStore(path)
    items = refs(3)
    feats = featurize(tiny, items, store)
    store.close()
    reopened = SqliteFeatureStore(path)
    got = reopened.get_many(tiny.id, "plain", [r.sha256 for r in items])
    assert len(got) == 3
    assert np.allclose(np.stack([got[r.sha256] for r in items]), feats.numpy())
    assert reopened.get_many("another-backbone", "plain", [items[0].sha256]) == {}


def test_unreadable_image_names_the_item(tiny):
    bad = ImageRef(
        label="manifest line 7 (id 'b')",
        sha256="0" * 64,
        load=lambda: decode_image(b"not a png", "manifest line 7 (id 'b')"),
    )
    with pytest.raises(ImageError, match=r"line 7 \(id 'b'\): not a readable image"):
        featurize(tiny, [*refs(2), bad], MemoryFeatureStore())


def test_truncated_png_is_rejected():
    buf = io.BytesIO()
    color_image(0, size=64).save(buf, format="PNG")
    with pytest.raises(ImageError):
        decode_image(buf.getvalue()[:200], "item 'x'")
