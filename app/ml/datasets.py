"""Reference data for demos and benchmarks: Fashion-MNIST (Debian `dataset-fashion-mnist`) and the
standard uniform candidate-set generator (method.md §1)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (optionally gzipped): magic with the dimension count in its last byte, one
    big-endian int32 per dimension, then uint8 data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = struct.unpack(">" + "i" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images.is_file():
        raise FileNotFoundError(
            f"{images} not found: install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist`"
        )
    return read_idx(images), read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)


def uniform_candidates(labels: np.ndarray, num_classes: int, q: float, seed: int) -> np.ndarray:
    """(N, K) 0/1 candidate masks: the true label always in; every other label independently with
    probability q (the benchmark protocol of PRODEN, RC and PiCO)."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((labels.shape[0], num_classes)) < q).astype(np.float32)
    mask[np.arange(labels.shape[0]), labels] = 1.0
    return mask
