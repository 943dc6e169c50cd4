"""Label quality of every PLL objective with and without prompt alignment (a benchmark, not a test).

Fashion-MNIST (Debian `dataset-fashion-mnist`), the `offline` backbone, candidate sets drawn
uniformly at each q on a training subset, evaluated on the official test split. Every row trains
through the engine's public API (`featurize`, `train`, `outputs`) with the same settings; image
features are cached on disk (build/quality/features.sqlite) between runs.

Rows: zero-shot (handcrafted prompt), zero-shot restricted to the candidates (the prior alone
picks within each set), NAIVE/CC/RC/PRODEN/LWS/CAVL/POP each plain and with alignment (prior fully
trusted), Candor's default (alignment with label-free trust), and true-label prompt learning (the
upper bound). Columns per q: test accuracy and disambiguation accuracy (share of training items
whose chosen label is the true one), mean ± std over the seeds, last epoch.

    python bench/quality.py --quick            # minutes: 2,000 training items, 1 seed, 5 epochs
    python bench/quality.py                    # 10,000 items, seeds 1 2 3, 10 epochs
    python bench/quality.py --quick --q 0.3 --bridge-n 500   # one point of the prior-strength sweep
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ml.backbones import handcrafted_features, load_backbone  # noqa: E402
from app.ml.config import OBJECTIVES, CleanConfig  # noqa: E402
from app.ml.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, uniform_candidates  # noqa: E402
from app.ml.engine import outputs  # noqa: E402
from app.ml.features import ImageRef, SqliteFeatureStore, decode_image, featurize, sha256_bytes  # noqa: E402
from app.ml.results import choice_within  # noqa: E402
from app.ml.trainer import train  # noqa: E402


def refs(images: np.ndarray, prefix: str) -> list[ImageRef]:
    out = []
    for i, arr in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        data = buf.getvalue()
        out.append(ImageRef(f"{prefix} {i}", sha256_bytes(data), lambda d=data: decode_image(d, "x")))
    return out


def rows_for(objectives: list[str]) -> list[tuple[str, dict | None]]:
    """(row name, config overrides); None marks the zero-shot rows."""
    rows: list[tuple[str, dict | None]] = [("zero-shot", None), ("zero-shot, restricted to candidates", None)]
    for name in objectives:
        rows.append((name.upper(), {"objective": {"name": name}, "alignment": {"enabled": False}}))
        rows.append((f"{name.upper()} + alignment", {"objective": {"name": name}, "alignment": {"auto_trust": False}}))
    rows.append(("Candor default (PRODEN + alignment, auto trust)", {}))
    rows.append(("true labels (upper bound)", {"objective": {"name": "proden"}, "alignment": {"enabled": False}}))
    return rows


def plot(results: dict, names: list[str], qs: list[float], path: Path) -> None:
    """Accuracy against q: one colour per objective, dashed with alignment, thick for the default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10").colors  # 9 objectives and baselines; true labels and default apart
    base_names = list(dict.fromkeys(n.split(" + ")[0] for n in names))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, which, title in ((axes[0], 0, "test accuracy"), (axes[1], 1, "disambiguation accuracy")):
        for name in names:
            ys = [100 * statistics.mean(v[which] for v in results[(name, q)]) for q in qs]
            if "default" in name:
                color = "black"
            elif name.startswith("true labels"):
                color = "dimgray"
            else:
                color = palette[base_names.index(name.split(" + ")[0]) % len(palette)]
            dashed = " + alignment" in name and "default" not in name
            ax.plot(qs, ys, "--" if dashed else "-", marker="o", color=color, label=name,
                    linewidth=2.8 if "default" in name else 1.2)  # fmt: skip
        ax.set_xlabel("q (rate at which each wrong label joins a set)")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-train", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--q", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=4)
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    ap.add_argument("--out", default="build/quality")
    ap.add_argument(
        "--bridge-n", type=int, default=0, help="prior-strength sweep: fit the bridge on this many labelled images"
    )
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from OUT/results.json")
    args = ap.parse_args()
    if args.plot_only:
        raw = json.loads((Path(args.out) / "results.json").read_text())
        results = {(k.rsplit("|", 1)[0], float(k.rsplit("|", 1)[1])): v for k, v in raw.items()}
        names = list(dict.fromkeys(k[0] for k in results))
        plot(results, names, sorted({k[1] for k in results}), Path(args.out) / "quality.png")
        return 0
    n_train = args.n_train or (2000 if args.quick else 10000)
    n_test = args.n_test or (1000 if args.quick else 10000)
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    epochs = args.epochs or (5 if args.quick else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    backbone = load_backbone("offline")
    store = SqliteFeatureStore(out / "features.sqlite")
    tr_img, tr_lab = load_fashion_mnist("train")
    te_img, te_lab = load_fashion_mnist("test")
    pick = np.random.default_rng(0).choice(len(tr_lab), n_train, replace=False)
    tpick = np.random.default_rng(1).choice(len(te_lab), n_test, replace=False)
    t0 = time.time()
    f_train = featurize(backbone, refs(tr_img[pick], "train"), store, view="invert", progress=True)
    f_test = featurize(backbone, refs(te_img[tpick], "test"), store, view="invert", progress=True)
    y, y_test = torch.from_numpy(tr_lab[pick]), torch.from_numpy(te_lab[tpick])
    print(f"features ready in {time.time() - t0:.0f} s", flush=True)

    classes = FASHION_MNIST_CLASSES
    if args.bridge_n:
        # Emulate a backbone whose pretraining saw this domain: a ridge map from the image features
        # into the text space, fitted on a disjoint labelled slice against the bare class names
        # (not the handcrafted template, which would make that template optimal by construction).
        rest = np.setdiff1d(np.arange(len(tr_lab)), pick)
        fit = np.random.default_rng(2).choice(rest, args.bridge_n, replace=False)
        f_fit = featurize(backbone, refs(tr_img[fit], "bridge"), store, view="invert", progress=True)
        targets = backbone.encode_texts(classes)[torch.from_numpy(tr_lab[fit])]
        lam = 1.0
        w = torch.linalg.solve(f_fit.T @ f_fit + lam * torch.eye(f_fit.shape[1]), f_fit.T @ targets)
        f_train = torch.nn.functional.normalize(f_train @ w, dim=1)
        f_test = torch.nn.functional.normalize(f_test @ w, dim=1)
        out = out / f"bridge-{args.bridge_n}"
        out.mkdir(parents=True, exist_ok=True)
    base = CleanConfig(backbone="offline").with_overrides(
        prompt={"n_ctx": args.n_ctx},
        train={"epochs": epochs, "batch_size": args.batch_size},
        features={"view": "invert"},
    )
    prior = handcrafted_features(backbone, classes, base.templates)
    zs_train = (backbone.logit_scale * f_train @ prior.T).softmax(dim=1)
    zs_test_acc = float(((f_test @ prior.T).argmax(dim=1) == y_test).float().mean())
    print(f"zero-shot test accuracy of the prior: {100 * zs_test_acc:.1f}%", flush=True)

    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    rows = rows_for(args.objectives)
    for q in args.q:
        for seed in seeds:
            mask = torch.from_numpy(uniform_candidates(tr_lab[pick], len(classes), q, seed))
            ids = [str(i) for i in range(n_train)]
            for name, overrides in rows:
                if overrides is None:
                    dis = zs_train.argmax(dim=1) if name == "zero-shot" else choice_within(zs_train, mask)
                    results.setdefault((name, q), []).append((zs_test_acc, float((dis == y).float().mean())))
                    continue
                cfg = base.with_overrides(**overrides, train={"seed": seed})
                m = torch.nn.functional.one_hot(y, len(classes)).float() if name.startswith("true") else mask
                t = time.time()
                res = train(backbone, classes, f_train, m, cfg)
                out_ = outputs(backbone, ids, classes, m, cfg, res)
                test_acc = float((out_.classifier.probabilities(f_test).argmax(dim=1) == y_test).float().mean())
                dis_acc = float((choice_within(res.posterior, mask) == y).float().mean())
                results.setdefault((name, q), []).append((test_acc, dis_acc))
                print(f"q={q} seed={seed} {name:<48} test {test_acc:.3f} disamb {dis_acc:.3f} "
                      f"({time.time() - t:.0f} s)", flush=True)  # fmt: skip

    def cell(vals: list[float]) -> str:
        mean = 100 * statistics.mean(vals)
        return f"{mean:.1f} ± {100 * statistics.stdev(vals):.1f}" if len(vals) > 1 else f"{mean:.1f}"

    header = "| method | " + " | ".join(f"q={q} test | q={q} disamb." for q in args.q) + " |"
    lines = [header, "|---|" + "---|---|" * len(args.q)]
    for name, _ in rows:
        cells = []
        for q in args.q:
            vals = results[(name, q)]
            cells += [cell([v[0] for v in vals]), cell([v[1] for v in vals])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print()
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in results.items()}, indent=1) + "\n")

    plot(results, [name for name, _ in rows], args.q, out / "quality.png")
    print(f"wrote {out / 'table.md'} and {out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
