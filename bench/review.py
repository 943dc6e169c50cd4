"""How much a few human reviews help, by the order they are asked in (a benchmark, not a test).

Fashion-MNIST (Debian `dataset-fashion-mnist`), the `offline` backbone, candidate sets drawn
uniformly at q on a training subset (the same draw and feature cache as bench/quality.py). One job
trains on the sets; its label rows are ranked three ways:

* Candor's review queue (app.ml.review: chance the label is wrong, weighted by how much the job
  confuses the item's pair of classes, plus the outside mass of suspect sets);
* lowest confidence first;
* random order.

A simulated reviewer answers the first 2%, 5% and 10% of each order truthfully; each answer makes
the item's candidate set the true label alone (what the service's next job does with a reviewed
label), and the job is trained again on the changed sets with the same seed. The disambiguation
gain is the share of all items whose chosen label is the true one after, minus before; "direct"
is the part the reviewed items themselves account for, the rest is what the retraining carried
over to items nobody looked at. The engine runs directly (featurize, train, outputs), without the
service.

    python bench/review.py                   # 2,000 items, q = 0.3, 5 epochs, ten trainings (see docs/results.md)
    python bench/review.py --write           # the same, and the table into docs/results.md ("Review queue")
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.ml.backbones import load_backbone  # noqa: E402
from app.ml.config import CleanConfig  # noqa: E402
from app.ml.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, uniform_candidates  # noqa: E402
from app.ml.engine import outputs  # noqa: E402
from app.ml.features import SqliteFeatureStore, featurize  # noqa: E402
from app.ml.results import choice_within  # noqa: E402
from app.ml.review import ReviewRow, review_order  # noqa: E402
from app.ml.trainer import train  # noqa: E402
from bench.quality import refs  # noqa: E402

BUDGETS = (0.02, 0.05, 0.10)
ORDERS = ("Candor queue", "lowest confidence", "random")
SECTION = "## Review queue"


def run(backbone, classes, feats, mask, cfg):
    """Train once; (chosen label per item, label rows)."""
    res = train(backbone, classes, feats, mask, cfg)
    out = outputs(backbone, [str(i) for i in range(mask.shape[0])], classes, mask, cfg, res)
    return choice_within(res.posterior, mask), out.items


def orders(items, seed: int) -> dict[str, list[int]]:
    rows = [
        ReviewRow(r.label, r.confidence, r.posterior, r.margin, r.outside_mass, r.candidates_suspect) for r in items
    ]
    queue = [i for i, _ in review_order(rows)]
    lowest = sorted(range(len(items)), key=lambda i: (items[i].confidence, i))
    rand = np.random.default_rng(seed).permutation(len(items)).tolist()
    return {"Candor queue": queue, "lowest confidence": lowest, "random": rand}


def table(res: dict) -> str:
    lines = [
        f"Fashion-MNIST, {res['n']} training items, q = {res['q']} (mean |S| = {res['mean_set']:.2f}), "
        f"`offline` backbone, {res['epochs']} epochs, seed {res['seed']}; disambiguation accuracy before any "
        f"review {100 * res['before']:.2f}% ({res['wrong_before']} items wrong). Gain in points of disambiguation "
        f"accuracy over all items after retraining with the answers (direct: the reviewed items' own fixes; "
        f"carried: items nobody reviewed).",
        "",
        "| budget | reviews | order | wrong among reviewed | gain | direct | carried | gain / random's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in res["budgets"]:
        rand = b["orders"]["random"]["gain"]
        for name in ORDERS:
            o = b["orders"][name]
            ratio = f"{o['gain'] / rand:.2f}x" if rand > 0 else "n/a"
            lines.append(
                f"| {100 * b['budget']:.0f}% | {b['reviews']} | {name} | {o['wrong_reviewed']} | "
                f"{100 * o['gain']:+.2f} | {100 * o['direct']:+.2f} | {100 * o['carried']:+.2f} | {ratio} |"
            )
    five = next(b for b in res["budgets"] if abs(b["budget"] - 0.05) < 1e-9)
    g, r = five["orders"]["Candor queue"]["gain"], five["orders"]["random"]["gain"]
    verdict = "met" if r > 0 and g >= 2 * r else "not met"
    lines += [
        "",
        f"Goal (at 5% the queue's gain is at least twice random's): **{verdict}** "
        f"({100 * g:+.2f} against {100 * r:+.2f} points). Wall time {res['seconds'] / 60:.1f} min "
        f"on {res['threads']} CPU threads.",
    ]
    return "\n".join(lines)


def write_docs(text: str, path: Path) -> None:
    """Replace (or append) the "Review queue" section of docs/results.md."""
    body = (
        f"{SECTION}\n\n`bench/review.py --write` (see its docstring for the protocol): a simulated truthful "
        f"reviewer answers the first 2%, 5% and 10% of three orders of one job's label rows, and the job is "
        f"trained again on the answered sets.\n\n{text}\n"
    )
    doc = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    doc = pattern.sub(body + "\n", doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + body
    path.write_text(doc.rstrip("\n") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--q", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="build/quality/features.sqlite", help="image feature cache (bench/quality's)")
    ap.add_argument("--out", default="build/review")
    ap.add_argument("--write", action="store_true", help="write the table into docs/results.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    backbone = load_backbone("offline")
    store = SqliteFeatureStore(Path(args.cache))
    tr_img, tr_lab = load_fashion_mnist("train")
    pick = np.random.default_rng(0).choice(len(tr_lab), max(args.n_train, 10000), replace=False)[: args.n_train]
    feats = featurize(backbone, refs(tr_img[pick], "train"), store, view="invert", progress=True)
    y = torch.from_numpy(tr_lab[pick])
    classes = FASHION_MNIST_CLASSES
    cfg = CleanConfig(backbone="offline").with_overrides(
        prompt={"n_ctx": 4}, train={"epochs": args.epochs, "batch_size": 128, "seed": args.seed},
        features={"view": "invert"},
    )  # fmt: skip
    mask = torch.from_numpy(uniform_candidates(tr_lab[pick], len(classes), args.q, args.seed)).float()
    chosen, items = run(backbone, classes, feats, mask, cfg)
    right = chosen == y
    before = float(right.float().mean())
    print(f"before review: disambiguation {100 * before:.2f}% ({time.time() - t0:.0f} s)", flush=True)
    ranked = orders(items, args.seed)
    n = len(items)
    res = {
        "n": n, "q": args.q, "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
        "mean_set": float(mask.sum(dim=1).mean()), "before": before, "wrong_before": int((~right).sum()),
        "budgets": [],
    }  # fmt: skip
    for budget in BUDGETS:
        k = round(budget * n)
        entry = {"budget": budget, "reviews": k, "orders": {}}
        for name in ORDERS:
            reviewed = torch.tensor(ranked[name][:k], dtype=torch.long)
            answered = mask.clone()
            answered[reviewed] = torch.nn.functional.one_hot(y[reviewed], len(classes)).float()
            after_chosen, _ = run(backbone, classes, feats, answered, cfg)
            after = float((after_chosen == y).float().mean())
            direct = float((~right[reviewed]).sum()) / n
            gain = after - before
            wrong = int((~right[reviewed]).sum())
            entry["orders"][name] = {"gain": gain, "direct": direct, "carried": gain - direct, "wrong_reviewed": wrong}
            print(f"budget {100 * budget:.0f}% ({k}) {name:<18} gain {100 * gain:+.2f} points "
                  f"(direct {100 * direct:+.2f}) ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
        res["budgets"].append(entry)
    res["seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    text = table(res)
    print(text)
    if args.write:
        write_docs(text, ROOT / "docs" / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
