from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny():
    from app.ml.backbones import load_backbone

    return load_backbone("tiny")


@pytest.fixture(scope="session")
def offline():
    from app.ml.backbones import load_backbone

    return load_backbone("offline")


def color_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture
def write_dataset(tmp_path: Path):
    """Write a manifest + classes file of random PNGs; returns (manifest, classes_file)."""

    def make(rows: list[dict] | None = None, classes: list[str] | None = None, n: int = 12):
        classes = classes or ["cat", "dog", "bird"]
        (tmp_path / "img").mkdir(exist_ok=True)
        if rows is None:
            rows = []
            for i in range(n):
                rel = f"img/{i}.png"
                color_image(i).save(tmp_path / rel)
                rows.append({"id": f"item-{i}", "image": rel, "candidates": [classes[i % 3], classes[(i + 1) % 3]]})
        manifest = tmp_path / "manifest.jsonl"
        manifest.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        classes_file = tmp_path / "classes.txt"
        classes_file.write_text("\n".join(classes) + "\n")
        return manifest, classes_file

    return make
