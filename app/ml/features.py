"""Image features are computed once per (image content hash, backbone id, view) and cached.

The store is a small protocol so the CLI (SQLite file), tests (memory) and the service
(PostgreSQL) share one featurisation function. Training never runs the image tower: it consumes
the (N, D) matrix this module returns.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from app.ml.backbones import Backbone


class ImageError(ValueError):
    """An image could not be read or decoded; names the item."""


@dataclass(frozen=True)
class ImageRef:
    """An image known by its content hash; ``load`` opens it only when features are missing."""

    label: str  # how messages name the item, e.g. "manifest line 3 (id 'a')"
    sha256: str
    load: Callable[[], Image.Image]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, label: str) -> Image.Image:
    """Decode image bytes fully (so truncated files fail here), or raise ImageError naming the item."""
    import io

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except Exception as exc:
        raise ImageError(f"{label}: not a readable image ({type(exc).__name__}: {exc})") from exc


class FeatureStore(Protocol):
    def get_many(self, backbone_id: str, view: str, hashes: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_many(self, backbone_id: str, view: str, features: dict[str, np.ndarray]) -> None: ...


class MemoryFeatureStore:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], np.ndarray] = {}

    def get_many(self, backbone_id, view, hashes):
        out = {}
        for h in hashes:
            v = self._data.get((backbone_id, view, h))
            if v is not None:
                out[h] = v
        return out

    def put_many(self, backbone_id, view, features):
        for h, v in features.items():
            self._data[(backbone_id, view, h)] = np.asarray(v, dtype=np.float32)


class SqliteFeatureStore:
    """Features in one SQLite file, float32 little-endian blobs (no pickle)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS features (backbone TEXT, view TEXT, sha256 TEXT, dim INTEGER, "
            "vec BLOB, PRIMARY KEY (backbone, view, sha256))"
        )
        self._conn.commit()

    def get_many(self, backbone_id, view, hashes):
        out: dict[str, np.ndarray] = {}
        hashes = list(dict.fromkeys(hashes))
        with self._lock:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT sha256, vec FROM features WHERE backbone = ? AND view = ? AND sha256 IN ({marks})",
                    [backbone_id, view, *chunk],
                ).fetchall()
                for h, blob in rows:
                    out[h] = np.frombuffer(blob, dtype="<f4").copy()
        return out

    def put_many(self, backbone_id, view, features):
        rows = [
            (backbone_id, view, h, int(v.shape[-1]), np.asarray(v, dtype="<f4").tobytes()) for h, v in features.items()
        ]
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)
            self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def _batches(seq: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def featurize(
    backbone: Backbone,
    images: Sequence[ImageRef],
    store: FeatureStore,
    view: str = "plain",
    batch_size: int = 64,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(N, D) L2-normalised features in the order of ``images``, running the image tower only on
    content hashes the store does not have (each distinct hash once)."""
    cached = store.get_many(backbone.id, view, [r.sha256 for r in images])
    missing: dict[str, ImageRef] = {}
    for ref in images:
        if ref.sha256 not in cached and ref.sha256 not in missing:
            missing[ref.sha256] = ref
    todo = list(missing.values())
    bar = tqdm(total=len(todo), desc="featurising", unit="img", disable=not progress or not todo)
    done = 0
    for chunk in _batches(todo, batch_size):
        pil = []
        for ref in chunk:
            try:
                pil.append(ref.load())
            except ImageError:
                raise
            except Exception as exc:
                raise ImageError(f"{ref.label}: cannot read image ({type(exc).__name__}: {exc})") from exc
        feats = backbone.encode_images(pil, view=view).cpu().numpy().astype(np.float32)
        new = {ref.sha256: feats[i] for i, ref in enumerate(chunk)}
        store.put_many(backbone.id, view, new)
        cached.update(new)
        done += len(chunk)
        bar.update(len(chunk))
        if on_batch is not None:
            on_batch(done, len(todo))
    bar.close()
    return torch.from_numpy(np.stack([cached[r.sha256] for r in images])) if images else torch.empty(0)
