"""Image features are computed once per (image content hash, backbone id, view) and cached.

The store is a small protocol so the CLI (SQLite file), tests (memory) and the service
(PostgreSQL) share one featurisation function. Training never runs the image tower: it consumes
the (N, D) matrix this module returns.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from app.ml.backbones import Backbone
from app.ml.text import plain


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


DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


def default_max_pixels() -> int:
    """CANDOR_MAX_IMAGE_PIXELS (the service's setting of that name), else 40 megapixels. The
    engine reads the variable itself so that every process decoding images (API, workers, CLI)
    applies the same cap."""
    raw = os.environ.get("CANDOR_MAX_IMAGE_PIXELS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_IMAGE_PIXELS


# Pillow refuses images over twice its own limit inside Image.open, before decode_image can give
# the size; its limit is kept at least at ours so that decode_image's own check answers first
# (Pillow's stays as a second guard for any other code that opens images).
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, default_max_pixels())


def header_pixels(data: bytes) -> int | None:
    """Width x height as the image's header states it, without decoding; None when the header
    cannot be read (decode_image then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Exception:
        return None
    return width * height


def decode_image(data: bytes, label: str, max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes fully (so truncated files fail here), or raise ImageError naming the item.

    The width and height come from the header first: an image over ``max_pixels`` (default
    :func:`default_max_pixels`) is refused before any pixel is decoded."""
    limit = max_pixels or default_max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        found = _BOMB_SIZE.search(str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageError(f"{label}: image has {size}, over the limit of {limit:,}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a readable image (unknown or unsupported format)") from exc
    except Exception as exc:
        raise ImageError(f"{label}: not a readable image ({_why(exc)})") from exc
    width, height = im.size
    if width * height > limit:
        im.close()
        raise ImageError(
            f"{label}: image is {width} x {height} pixels ({width * height:,}), over the limit of {limit:,}"
        )
    try:
        im.load()
        return im
    except Exception as exc:
        im.close()
        raise ImageError(f"{label}: not a readable image ({_why(exc)})") from exc


def _why(exc: Exception) -> str:
    """A decoder's error in plain words, without object reprs."""
    text = plain(str(exc))
    return text if text and "0x" not in text and "b'" not in text else "damaged image data"


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
                raise ImageError(f"{ref.label}: cannot read image ({_why(exc)})") from exc
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
