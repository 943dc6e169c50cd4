"""Engine speed, all in one process on the same CPU and model (open_clip ViT-B-32, random init: the
cost is the same as with real weights). N images, K classes, one batch size for every loop.

(a) per-epoch time of the engine (cached image features, prompts at the truncated length) against a
    plain CoOp loop that re-encodes each batch's images every step and runs the text tower at the
    full 77-token context; goal >= 6x.
(b) the engine's per-step time against its floor, one forward and backward of the text tower over
    the K prompts at the truncated length; goal <= 1.2x.
(c) one-time featurisation throughput (hashing, cache look-up and store included) against the raw
    encoder (preprocessing + encode_image) on the same batches; goal >= 90%.

Usage: python bench/speed.py [--model ViT-B-32] [--n 256] [--k 10] [--batch 32]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ml.backbones import load_backbone
from app.ml.config import CleanConfig
from app.ml.features import ImageRef, MemoryFeatureStore, decode_image, featurize, sha256_bytes
from app.ml.objectives import soft_cross_entropy
from app.ml.trainer import Hooks, train

CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def plain_coop_epoch(backbone, blobs: list[bytes], mask: torch.Tensor, classes, batch: int, n_ctx: int) -> float:
    """CoOp as usually written: every step runs the image tower on the batch and the text tower at 77."""
    model, tok = backbone.model, backbone.tokenizer
    tower = backbone.tower
    ids = tok([f"{' '.join(['X'] * n_ctx)} {c}." for c in classes])
    with torch.no_grad():
        emb = tower.token_embedding(ids)
    prefix, suffix, pool = emb[:, :1], emb[:, 1 + n_ctx :], tower.pool_index(ids)
    ctx = torch.nn.Parameter(torch.randn(n_ctx, backbone.ctx_dim) * 0.02)
    opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9)
    w = mask / mask.sum(dim=1, keepdim=True)
    order = torch.randperm(len(blobs), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for s in range(math.ceil(len(blobs) / batch)):
        idx = order[s * batch : (s + 1) * batch]
        pil = [decode_image(blobs[i], "x") for i in idx.tolist()]
        with torch.no_grad():
            f = model.encode_image(backbone.image_batch(pil), normalize=True)
        full = torch.cat([prefix, ctx.unsqueeze(0).expand(len(classes), -1, -1), suffix], dim=1)
        g = F.normalize(tower.run(full, pool), dim=-1)
        loss = soft_cross_entropy(100.0 * f @ g.T, w[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def text_floor(backbone, classes, n_ctx: int, reps: int) -> tuple[float, int]:
    encoder = backbone.prompt_encoder(classes, n_ctx)
    ctx = torch.nn.Parameter(torch.randn(n_ctx, backbone.ctx_dim) * 0.02)
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        encoder(ctx).sum().backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]), encoder.seq_len


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    args = ap.parse_args()
    classes = CLASSES[: args.k] if args.k <= len(CLASSES) else [f"class {i}" for i in range(args.k)]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; model {args.model} (random init), N={args.n}, K={args.k}, "
        f"batch {args.batch}, {args.n_ctx} context vectors"
    )

    backbone = load_backbone(f"openclip:{args.model}")
    blobs = images(args.n)
    refs = [ImageRef(f"image {i}", sha256_bytes(b), lambda b=b: decode_image(b, "x")) for i, b in enumerate(blobs)]
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, args.k, (args.n,), generator=g)
    mask = (torch.rand(args.n, args.k, generator=g) < 0.3).float()
    mask[torch.arange(args.n), y] = 1.0

    # warm-up of both paths (allocator, kernels)
    with torch.no_grad():
        backbone.model.encode_image(backbone.image_batch([decode_image(b, "x") for b in blobs[:4]]))

    # (c) featurisation vs the raw encoder, same batches
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, args.n, args.batch):
            pil = [decode_image(b, "x") for b in blobs[s : s + args.batch]]
            backbone.model.encode_image(backbone.image_batch(pil), normalize=True)
    raw_s = time.perf_counter() - t
    t = time.perf_counter()
    feats = featurize(backbone, refs, MemoryFeatureStore(), batch_size=args.batch)
    feat_s = time.perf_counter() - t

    # (a) + (b): the engine's epoch and steps on the cached features
    cfg = CleanConfig(backbone=f"openclip:{args.model}").with_overrides(
        prompt={"n_ctx": args.n_ctx}, train={"epochs": 2, "batch_size": args.batch}
    )
    step_times: list[float] = []
    last = [time.perf_counter()]

    def on_step(p):
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    epoch_marks: list[float] = []
    train(
        backbone,
        classes,
        feats,
        mask,
        cfg,
        hooks=Hooks(on_step=on_step, on_epoch_end=lambda c: epoch_marks.append(time.perf_counter())),
    )
    steps = math.ceil(args.n / args.batch)
    engine_epoch = epoch_marks[1] - epoch_marks[0]  # the second epoch: set-up excluded
    engine_step = statistics.median(step_times[steps:])
    floor_step, seq_len = text_floor(backbone, classes, args.n_ctx, reps=steps)

    plain_epoch = plain_coop_epoch(backbone, blobs, mask, classes, args.batch, args.n_ctx)

    print()
    print("| measure | Candor engine | baseline | ratio | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| (a) epoch time, {steps} steps | {engine_epoch:.2f} s | plain CoOp loop {plain_epoch:.2f} s "
        f"| **{plain_epoch / engine_epoch:.1f}x** faster | >= 6x |"
    )
    print(
        f"| (b) step time | {engine_step * 1000:.0f} ms | text-tower floor at {seq_len} tokens "
        f"{floor_step * 1000:.0f} ms | **{engine_step / floor_step:.2f}x** the floor | <= 1.2x |"
    )
    print(
        f"| (c) featurisation, {args.n} images | {args.n / feat_s:.1f} img/s "
        f"| raw encoder {args.n / raw_s:.1f} img/s | **{100 * raw_s / feat_s:.0f}%** of raw | >= 90% |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
