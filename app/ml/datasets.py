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


K_FMNIST = len(FASHION_MNIST_CLASSES)
# T-shirt/top, pullover, coat, shirt, dress; sandal, sneaker, ankle boot; bag; trouser
CONFUSABLE_GROUPS = [[0, 2, 4, 6, 3], [5, 7, 9], [8], [1]]
N_ANNOTATORS, N_SPAMMERS, IN_GROUP = 20, 2, 0.8


def simulate_annotators(labels: np.ndarray, regime: str, seed: int) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """Simulated annotators' votes (item, annotator, label) on items of true class ``labels`` and
    each annotator's accuracy parameter (0.1 for spammers). A pool of 20: 18 with accuracies spread
    evenly over 0.55-0.85 (shuffled per seed) and 2 spammers answering uniformly at random. A wrong
    answer stays within the true class's confusable group (:data:`CONFUSABLE_GROUPS`) with
    probability 0.8, each annotator preferring some group members over others (Dirichlet(1)
    weights), else (and always for bag and trouser) uniform over the other classes. ``regime``
    'dense': 3 distinct annotators per item; 'sparse': half the items 1, half 3."""
    rng = np.random.default_rng(1000 + seed)
    n = len(labels)
    acc = np.concatenate(
        [rng.permutation(np.linspace(0.55, 0.85, N_ANNOTATORS - N_SPAMMERS)), np.full(N_SPAMMERS, -1.0)]
    )
    acc = acc[rng.permutation(N_ANNOTATORS)]
    group_of = {c: g for g in CONFUSABLE_GROUPS for c in g}
    prefs = rng.dirichlet(np.ones(K_FMNIST), size=N_ANNOTATORS)  # within-group preferences per annotator
    per_item = np.full(n, 3) if regime == "dense" else np.where(rng.permutation(n) < n // 2, 1, 3)
    votes = []
    for i in range(n):
        y = int(labels[i])
        for j in rng.choice(N_ANNOTATORS, per_item[i], replace=False):
            a = acc[j]
            if a < 0:  # spammer
                lab = int(rng.integers(K_FMNIST))
            elif rng.random() < a:
                lab = y
            else:
                mates = [c for c in group_of[y] if c != y]
                if mates and rng.random() < IN_GROUP:
                    w = prefs[j, mates] / prefs[j, mates].sum()
                    lab = int(rng.choice(mates, p=w))
                else:
                    lab = int(rng.choice([c for c in range(K_FMNIST) if c != y]))
            votes.append((i, int(j), lab))
    return votes, np.where(acc < 0, 1.0 / K_FMNIST, acc)
