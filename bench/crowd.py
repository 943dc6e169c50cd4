"""Annotators' votes: Candor against the crowdsourcing methods on the same items (a benchmark, not a test).

Fashion-MNIST (Debian `dataset-fashion-mnist`) training items with simulated annotators, the
`offline` backbone's image features (cached once in build/quality/features.sqlite, shared with
bench/quality.py: the items are the same prefix of the same fixed draw; the official test split is
held out and used only for the classifier's test accuracy).

Simulated annotators (``app.ml.datasets.simulate_annotators``): a pool of 20. 18 have accuracies spread evenly over
0.55-0.85 (shuffled per seed); 2 are spammers who answer uniformly at random. A wrong answer stays
within the true class's confusable group with probability 0.8 (T-shirt/top, pullover, coat,
shirt, dress; sandal, sneaker, ankle boot), each annotator preferring some group members over
others (their own Dirichlet(1) weights); otherwise, and always for the classes alone in their
group (bag, trouser), it is uniform over the other classes. Regimes: ``dense`` (3 distinct
annotators per item) and ``sparse`` (half the items 1 annotator, half 3), annotators drawn
uniformly at random per item.

Methods, all on the same votes: majority vote (crowd-kit, ties broken at random by crowd-kit);
crowd-kit Dawid-Skene, GLAD, MACE, One-Coin Dawid-Skene; cleanlab CROWDLAB
(``get_label_quality_multiannotator``) with pred_probs from 5-fold cross-validated logistic
regression on the same cached features, trained on the majority-vote labels (cleanlab's recipe);
Candor union-only (today's behaviour without votes: the candidate set is the union of the votes,
the prompt is trained on it) and Candor's default (votes as evidence, app/ml/crowd.py). Columns:
consensus accuracy against the true labels, and the mean absolute error of each method's
annotator-accuracy estimates against each annotator's true share of correct labels.

An annotator's estimated accuracy is, for every method that gives item posteriors (MV's vote
shares, DS, GLAD, MACE, One-Coin, Candor), the mean over their votes of the posterior probability
of the label they gave; for CROWDLAB, its `agreement_with_consensus`.

    python bench/crowd.py --quick            # 2,000 items, seed 1, 3 prompt epochs
    python bench/crowd.py                    # 10,000 items, seeds 1 2 3
    python bench/crowd.py --write            # and put the tables into docs/results.md
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from app.ml.backbones import load_backbone  # noqa: E402
from app.ml.config import CleanConfig  # noqa: E402
from app.ml.crowd import Votes  # noqa: E402
from app.ml.datasets import FASHION_MNIST_CLASSES, N_ANNOTATORS, load_fashion_mnist  # noqa: E402
from app.ml.datasets import simulate_annotators as simulate  # noqa: E402
from app.ml.engine import outputs  # noqa: E402
from app.ml.features import SqliteFeatureStore, featurize  # noqa: E402
from app.ml.trainer import train  # noqa: E402

K = len(FASHION_MNIST_CLASSES)
PEERS = ["majority vote", "Dawid-Skene", "GLAD", "MACE", "One-Coin Dawid-Skene", "CROWDLAB"]
UNION_ROW, DEFAULT_ROW = "Candor union-only (no votes)", "Candor default (votes)"


def true_accuracy(votes, labels) -> np.ndarray:
    right, total = np.zeros(N_ANNOTATORS), np.zeros(N_ANNOTATORS)
    for i, j, lab in votes:
        total[j] += 1
        right[j] += lab == labels[i]
    return right / np.maximum(total, 1)


def posterior_accuracy(votes, post: np.ndarray) -> np.ndarray:
    """Mean over each annotator's votes of the method's posterior probability of their label."""
    s, total = np.zeros(N_ANNOTATORS), np.zeros(N_ANNOTATORS)
    for i, j, lab in votes:
        total[j] += 1
        s[j] += post[i, lab]
    return s / np.maximum(total, 1)


def probas_matrix(probas, n: int) -> np.ndarray:
    """A crowd-kit probas_ DataFrame (task × label) as (N, K), zeros for labels never given."""
    out = np.zeros((n, K))
    for col in probas.columns:
        out[probas.index.to_numpy(), int(col)] = probas[col].to_numpy()
    return out


def run_peers(votes, n: int, features: np.ndarray, seed: int, mace_restarts: int = 10) -> dict:
    """Per peer: (consensus label (N,), estimated annotator accuracies (J,), seconds)."""
    import pandas as pd
    from crowdkit.aggregation import GLAD, MACE, DawidSkene, MajorityVote, OneCoinDawidSkene

    df = pd.DataFrame(votes, columns=["task", "worker", "label"])
    out = {}
    for name, make in [
        ("majority vote", MajorityVote),
        ("Dawid-Skene", lambda: DawidSkene(n_iter=100)),
        ("GLAD", GLAD),
        ("MACE", lambda: MACE(n_restarts=mace_restarts, random_state=seed)),
        ("One-Coin Dawid-Skene", lambda: OneCoinDawidSkene(n_iter=100)),
    ]:
        t = time.time()
        model = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "majority vote":
                pred = model.fit_predict(df)
                post = probas_matrix(model.fit_predict_proba(df), n)
            else:
                post = probas_matrix(model.fit_predict_proba(df), n)
                pred = None
        label = post.argmax(axis=1) if pred is None else pred.sort_index().to_numpy().astype(int)
        out[name] = (label, posterior_accuracy(votes, post), time.time() - t)
        print(f"  {name:<24} {time.time() - t:6.1f} s", flush=True)
    out["CROWDLAB"] = crowdlab(df, votes, n, features, out["majority vote"][0], seed)
    return out


def crowdlab(df, votes, n: int, features: np.ndarray, mv: np.ndarray, seed: int):
    from cleanlab.multiannotator import get_label_quality_multiannotator
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    t = time.time()
    labels = np.full((n, N_ANNOTATORS), np.nan)
    for i, j, lab in votes:
        labels[i, j] = lab
    clf = LogisticRegression(max_iter=1000, C=1.0)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    pred_probs = cross_val_predict(clf, features, mv, cv=cv, method="predict_proba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pandas as pd

        res = get_label_quality_multiannotator(pd.DataFrame(labels).astype("Int64"), pred_probs, verbose=False)
    stats = res["annotator_stats"].sort_index()
    est = np.full(N_ANNOTATORS, np.nan)
    est[stats.index.to_numpy().astype(int)] = stats["agreement_with_consensus"].to_numpy()
    label = res["label_quality"]["consensus_label"].to_numpy().astype(int)
    print(f"  {'CROWDLAB':<24} {time.time() - t:6.1f} s", flush=True)
    return label, est, time.time() - t


def annotations_of(votes, n: int) -> list[list[dict]]:
    out: list[list[dict]] = [[] for _ in range(n)]
    for i, j, lab in votes:
        out[i].append({"annotator": f"a{j:02d}", "label": FASHION_MNIST_CLASSES[lab]})
    return out


def run_candor(backbone, f_train, f_test, y_test, votes, n: int, cfg: CleanConfig, use_votes: bool):
    """Consensus labels, estimated accuracies (or None), test accuracy of the classifier, seconds."""
    t = time.time()
    index = {c: k for k, c in enumerate(FASHION_MNIST_CLASSES)}
    anns = annotations_of(votes, n)
    mask = torch.zeros(n, K)
    for i, a in enumerate(anns):
        mask[i, [index[v["label"]] for v in a]] = 1.0
    v = Votes.from_annotations(anns, index) if use_votes else None
    res = train(backbone, FASHION_MNIST_CLASSES, f_train, mask, cfg, votes=v)
    out = outputs(backbone, [str(i) for i in range(n)], FASHION_MNIST_CLASSES, mask, cfg, res)
    label = np.array([index[r.label] for r in out.items])
    test = float("nan")
    if len(y_test):
        test = float((out.classifier.probabilities(f_test).argmax(dim=1) == y_test).float().mean())
    est = None
    if res.votes is not None:
        est = np.full(N_ANNOTATORS, np.nan)
        for s in res.votes.annotators:
            est[int(s.annotator[1:])] = s.accuracy
    else:
        est = posterior_accuracy(votes, np.asarray(choice_onehot(res.posterior, mask)))
    return label, est, test, time.time() - t


def choice_onehot(posterior: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    p = posterior.double() * mask.double()
    return p / p.sum(dim=1, keepdim=True)


def mean_std(vals: list[float]) -> str:
    m = 100 * statistics.mean(vals)
    return f"{m:.1f} ± {100 * statistics.stdev(vals):.1f}" if len(vals) > 1 else f"{m:.1f}"


def tables(results: dict, regimes: list[str], seeds: list[int]) -> str:
    names = [*PEERS, UNION_ROW, DEFAULT_ROW]
    head = "| method | " + " | ".join(f"{r}: consensus acc. | {r}: annotator-acc. MAE" for r in regimes) + " |"
    lines = [head, "|---|" + "---|---|" * len(regimes)]
    for name in names:
        cells = []
        for r in regimes:
            runs = [results[r][s][name] for s in seeds if name in results[r].get(s, {})]
            cells.append(mean_std([x["acc"] for x in runs]) if runs else "—")
            cells.append(mean_std([x["mae"] for x in runs]) if runs else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Goal, cell by cell (percentage points; best peer by consensus accuracy in that seed):", ""]
    lines += [
        "| regime | seed | default | best peer | margin (goal ≥ +1.0) | default MAE | Dawid-Skene MAE | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in regimes:
        for s in seeds:
            row = results[r].get(s)
            if not row or DEFAULT_ROW not in row:
                continue
            best = max(PEERS, key=lambda p: row[p]["acc"])
            d, b = 100 * row[DEFAULT_ROW]["acc"], 100 * row[best]["acc"]
            dm, dsm = 100 * row[DEFAULT_ROW]["mae"], 100 * row["Dawid-Skene"]["mae"]
            ok = d - b >= 1.0 and dm <= dsm
            lines.append(
                f"| {r} | {s} | {d:.2f} | {best} {b:.2f} | {d - b:+.2f} | {dm:.2f} | {dsm:.2f} | "
                f"{'met' if ok else '**missed**'} |"
            )
    return "\n".join(lines)


def write_docs(table: str, command: str, meta: str) -> None:
    path = ROOT / "docs" / "results.md"
    text = path.read_text()
    section = (
        f"## Crowd votes\n\n<!-- written by bench/crowd.py --write -->\n\n```sh\n{command}\n```\n\n{meta}\n\n{table}\n"
    )
    pattern = re.compile(r"## Crowd votes\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the Crowd votes section of {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, help="items (default 10,000; --quick 2,000)")
    ap.add_argument(
        "--n-test", type=int, default=1000, help="test images for the classifier's accuracy (0: not measured)"
    )
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--regimes", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    ap.add_argument("--epochs", type=int, help="prompt training epochs (default 5; --quick 3)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-ctx", type=int, default=4)
    ap.add_argument("--mace-restarts", type=int, default=10, help="MACE's random restarts (crowd-kit's default: 10)")
    ap.add_argument("--no-union", action="store_true", help="skip the union-only row (one prompt training less)")
    ap.add_argument("--cache", default="build/quality/features.sqlite")
    ap.add_argument("--out", default="build/crowd")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--write", action="store_true", help="put the tables into docs/results.md")
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument(
        "--tables-only", action="store_true", help="the tables (and --write) from OUT/results.json, without running"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (2000 if args.quick else 10000)
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    epochs = args.epochs or (3 if args.quick else 5)
    out = Path(args.out)
    if args.tables_only:
        raw = json.loads((out / "results.json").read_text())
        results = {r: {int(s): row for s, row in raw.get(r, {}).items()} for r in args.regimes}
        seeds = sorted({s for r in results.values() for s in r})
        finish(results, args, n, seeds, epochs)
        return 0
    backbone = load_backbone("offline")
    Path(args.cache).parent.mkdir(parents=True, exist_ok=True)
    store = SqliteFeatureStore(Path(args.cache))
    from quality import refs  # the same PNG bytes, hence the same cache keys, as bench/quality.py

    tr_img, tr_lab = load_fashion_mnist("train")
    te_img, te_lab = load_fashion_mnist("test")
    pick = np.random.default_rng(0).choice(len(tr_lab), max(n, 10000), replace=False)[:n]
    tpick = np.random.default_rng(1).choice(len(te_lab), len(te_lab), replace=False)[: args.n_test]
    t0 = time.time()
    f_train = featurize(backbone, refs(tr_img[pick], "train"), store, view="invert", progress=True)
    f_test = (
        featurize(backbone, refs(te_img[tpick], "test"), store, view="invert", progress=True) if len(tpick) else None
    )
    print(f"features ready in {time.time() - t0:.0f} s", flush=True)
    if args.features_only:
        return 0
    y, y_test = tr_lab[pick], torch.from_numpy(te_lab[tpick])
    cfg = CleanConfig(backbone="offline").with_overrides(
        prompt={"n_ctx": args.n_ctx},
        train={"epochs": epochs, "batch_size": args.batch_size},
        features={"view": "invert"},
    )
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {r: {} for r in args.regimes}
    for seed in seeds:  # seeds outer: a partial run covers both regimes
        for regime in args.regimes:
            votes, _ = simulate(y, regime, seed)
            truth = true_accuracy(votes, y)
            print(f"{regime} seed {seed}: {len(votes)} votes", flush=True)
            row = {}
            for name, (label, est, secs) in run_peers(votes, n, f_train.numpy(), seed, args.mace_restarts).items():
                row[name] = {
                    "acc": float((label == y).mean()),
                    "mae": float(np.nanmean(np.abs(est - truth))),
                    "s": secs,
                }
            rcfg = cfg.with_overrides(train={"seed": seed})
            for name, use in [(UNION_ROW, False), (DEFAULT_ROW, True)]:
                if name == UNION_ROW and args.no_union:
                    continue
                label, est, test, secs = run_candor(backbone, f_train, f_test, y_test, votes, n, rcfg, use)
                row[name] = {"acc": float((label == y).mean()), "mae": float(np.nanmean(np.abs(est - truth))),
                             "test": test, "s": secs}  # fmt: skip
                print(f"  {name:<24} {secs:6.1f} s", flush=True)
            for name, v in row.items():
                print(f"  {name:<32} consensus {100 * v['acc']:.2f}  MAE {100 * v['mae']:.2f}", flush=True)
            results[regime][seed] = row
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    finish(results, args, n, seeds, epochs)
    return 0


def finish(results: dict, args, n: int, seeds: list[int], epochs: int) -> None:
    out = Path(args.out)
    table = tables(results, args.regimes, seeds)
    print()
    print(table)
    (out / "table.md").write_text(table + "\n")
    if args.write:
        command = "python bench/crowd.py " + " ".join(a for a in sys.argv[1:] if a != "--tables-only")
        meta = (
            f"{n:,} items, seeds {' '.join(map(str, seeds))}, regimes {', '.join(args.regimes)}; Candor's prompt "
            f"trained {epochs} epochs, {args.n_ctx} context vectors, batch {args.batch_size} (the votes' EM is "
            f"independent of these); mean ± std over seeds, consensus accuracy and annotator-accuracy MAE in %."
        )
        write_docs(table, command.replace(" --write", "").strip(), meta)


if __name__ == "__main__":
    sys.exit(main())
