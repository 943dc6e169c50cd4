"""`make demo`: clean 1,000 Fashion-MNIST training images whose labels were hidden in candidate
sets drawn at q = 0.3, through the `candor clean` CLI on the offline backbone, and score the result
against the true labels next to the zero-shot prior on the same items."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from app.ml.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, uniform_candidates


def build_manifest(folder: Path, n: int, q: float, seed: int) -> dict[str, str]:
    """Write PNGs, classes.txt and manifest.jsonl; return the hidden true label of each id."""
    images, labels = load_fashion_mnist("train")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(labels), size=n, replace=False))
    masks = uniform_candidates(labels[pick], len(FASHION_MNIST_CLASSES), q, seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(FASHION_MNIST_CLASSES) + "\n")
    truth = {}
    with (folder / "manifest.jsonl").open("w") as f:
        for row, i in enumerate(pick):
            item_id = f"fmnist-train-{i:05d}"
            rel = f"images/{item_id}.png"
            Image.fromarray(images[i]).save(folder / rel)
            cands = [FASHION_MNIST_CLASSES[k] for k in np.flatnonzero(masks[row])]
            f.write(json.dumps({"id": item_id, "image": rel, "candidates": cands}) + "\n")
            truth[item_id] = FASHION_MNIST_CLASSES[labels[i]]
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default="build/demo")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--q", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="offline")
    ap.add_argument("--epochs", type=int)
    args = ap.parse_args(argv)

    folder = Path(args.dir)
    truth = build_manifest(folder, args.n, args.q, args.seed)
    out = folder / "out"
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "clean",
        str(folder / "manifest.jsonl"),
        "--classes",
        str(folder / "classes.txt"),
        "--out",
        str(out),
        "--backbone",
        args.backbone,
        "--view",
        "invert",
        "--seed",
        str(args.seed),
        "--cache",
        str(folder / "features.sqlite"),
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    n = len(rows)
    candor = sum(r["label"] == truth[r["id"]] for r in rows)
    prior = sum(r["prior_label"] == truth[r["id"]] for r in rows)
    chance = sum(1.0 / len(r["posterior"]) for r in rows)
    mean_size = sum(len(r["posterior"]) for r in rows) / n
    ambiguous = sum(r["ambiguous"] for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    print()
    print(f"Fashion-MNIST, {n} training images, candidate sets at q = {args.q} (mean |S| = {mean_size:.2f})")
    print(f"{'method':<46}{'true label recovered':>22}")
    print(f"{'random candidate (expected)':<46}{chance:>10.1f} / {n}  {100 * chance / n:5.1f}%")
    print(f"{'zero-shot prior, best candidate':<46}{prior:>10d} / {n}  {100 * prior / n:5.1f}%")
    cfg = json.loads((out / "config.json").read_text())
    name = f"Candor ({cfg['objective']['name']}" + (" + alignment)" if cfg["alignment"]["enabled"] else ")")
    print(f"{name:<46}{candor:>10d} / {n}  {100 * candor / n:5.1f}%")
    print(
        f"flagged ambiguous: {ambiguous}; prior top-1 inside the candidate sets: "
        f"{metrics['prior_top1_in_candidates']:.1%} (chance {metrics['chance_in_candidates']:.1%})"
    )
    example = folder / "images" / f"{rows[0]['id']}.png"
    print(f"classifier: {out / 'classifier'}; try: .venv/bin/candor predict {out / 'classifier'} {example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
