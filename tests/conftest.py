from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The service under test talks to a database of its own and a Redis database of its own.
_pg = os.environ.get("CANDOR_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
os.environ["CANDOR_DATABASE_URL"] = _pg.rsplit("/", 1)[0] + f"/candor_test_{os.getpid()}"
os.environ["CANDOR_BROKER_URL"] = os.environ.get("CANDOR_TEST_REDIS", "redis://127.0.0.1:6379/15")
os.environ["CANDOR_EMBEDDED"] = "0"
os.environ["CANDOR_PROGRESS_INTERVAL"] = "0"
os.environ["CANDOR_FEATURE_CHUNK_SIZE"] = "4"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tests.helpers import color_image  # noqa: E402
from tests.service_fixtures import auth, client, database, db, dispatcher, other_auth  # noqa: E402, F401


@pytest.fixture(scope="session")
def tiny():
    from app.ml.backbones import load_backbone

    return load_backbone("tiny")


@pytest.fixture(scope="session")
def offline():
    from app.ml.backbones import load_backbone

    return load_backbone("offline")


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
