"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def color_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_bytes(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    color_image(seed, size).save(buf, format="PNG")
    return buf.getvalue()


def b64png(seed: int, size: int = 32) -> str:
    return base64.b64encode(png_bytes(seed, size)).decode()
