"""`make demo`: Fashion-MNIST through the service, as a user would drive it.

1,000 training images get candidate label sets drawn at q = 0.3 (the true label hidden among
them). The demo starts `candor serve --embedded` (SQLite and an in-process worker: no PostgreSQL,
no Redis, the `offline` backbone), creates an API key, and drives it with the Python client
(`candor.Client`): uploads the images as a ZIP, runs a job while printing its progress, downloads the
labels, scores them against the hidden truth next to the zero-shot prior, and calls /predict on
unseen test images. `--via cli` runs the same job with `candor clean` instead.

`--crowd` (`make demo-crowd`) gives the images annotators' votes instead of drawn candidate sets:
the simulated pool of bench/crowd.py (20 annotators, accuracies 0.55-0.85, errors within
confusable groups, two spammers; half the items one vote, half three), so the job models the
annotators; the demo compares its labels with majority vote and prints the annotators it
estimated (GET /v1/jobs/{id}/annotators) next to their true accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from app.ml.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, simulate_annotators, uniform_candidates
from candor import Client, ConnectionFailed, Job, Unavailable


def build_manifest(folder: Path, n: int, q: float, seed: int) -> dict[str, str]:
    """Write PNGs, classes.txt and manifest.jsonl; return the hidden true label of each id."""
    images, labels = load_fashion_mnist("train")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(labels), size=n, replace=False))
    masks = uniform_candidates(labels[pick], len(FASHION_MNIST_CLASSES), q, seed)
    return _write_manifest(
        folder,
        images,
        labels,
        pick,
        lambda row: {"candidates": [FASHION_MNIST_CLASSES[k] for k in np.flatnonzero(masks[row])]},
    )


def _write_manifest(folder: Path, images, labels, pick, fields) -> dict[str, str]:
    """Write the picked images as PNGs, classes.txt and manifest.jsonl (each line ``{id, image}``
    and ``fields(row)``); return the hidden true label of each id."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(FASHION_MNIST_CLASSES) + "\n")
    truth = {}
    with (folder / "manifest.jsonl").open("w") as f:
        for row, i in enumerate(pick):
            item_id = f"fmnist-train-{i:05d}"
            rel = f"images/{item_id}.png"
            Image.fromarray(images[i]).save(folder / rel)
            f.write(json.dumps({"id": item_id, "image": rel, **fields(row)}) + "\n")
            truth[item_id] = FASHION_MNIST_CLASSES[labels[i]]
    return truth


def build_crowd_manifest(folder: Path, n: int, seed: int) -> tuple[dict[str, str], dict[str, float]]:
    """Write PNGs, classes.txt and a manifest of annotators' votes (sparse regime); return the
    hidden true label of each id and each annotator's true share of right labels."""
    images, labels = load_fashion_mnist("train")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(labels), size=n, replace=False))
    votes, _ = simulate_annotators(labels[pick], "sparse", seed)
    per_item: dict[int, list[dict]] = {}
    right: dict[str, list[int]] = {}
    for row, j, lab in votes:
        who = f"annotator-{j:02d}"
        per_item.setdefault(row, []).append({"annotator": who, "label": FASHION_MNIST_CLASSES[lab]})
        right.setdefault(who, []).append(int(lab == labels[pick[row]]))
    truth = _write_manifest(folder, images, labels, pick, lambda row: {"annotations": per_item[row]})
    return truth, {who: sum(v) / len(v) for who, v in right.items()}


def print_crowd_table(rows: list[dict], truth: dict[str, str], annotators: list, true_acc: dict[str, float]) -> None:
    n = len(rows)
    majority = 0.0
    for r in rows:
        counts: dict[str, int] = {}
        for a in r["annotations"]:
            counts[a["label"]] = counts.get(a["label"], 0) + 1
        top = max(counts.values())
        tied = [label for label, c in counts.items() if c == top]
        majority += (truth[r["id"]] in tied) / len(tied)  # ties broken at random, in expectation
    candor = sum(r["label"] == truth[r["id"]] for r in rows)
    single = sum(len(r["annotations"]) == 1 for r in rows)
    print()
    print(
        f"Fashion-MNIST, {n} training images, annotators' votes ({single} items with one vote, {n - single} with three)"
    )
    print(f"{'method':<46}{'true label recovered':>22}")
    print(f"{'majority vote (ties at random, expected)':<46}{majority:>10.1f} / {n}  {100 * majority / n:5.1f}%")
    print(f"{'Candor (votes as evidence)':<46}{candor:>10d} / {n}  {100 * candor / n:5.1f}%")
    print()
    print(f"{'annotator':<16}{'items':>7}{'estimated accuracy':>20}{'true accuracy':>16}")
    for a in sorted(annotators, key=lambda a: -a.accuracy):
        print(f"{a.annotator:<16}{a.items:>7}{100 * a.accuracy:>19.1f}%{100 * true_acc[a.annotator]:>15.1f}%")


def print_table(rows: list[dict], truth: dict[str, str], q: float, method: str) -> None:
    n = len(rows)
    candor = sum(r["label"] == truth[r["id"]] for r in rows)
    prior = sum(r["prior_label"] == truth[r["id"]] for r in rows)
    chance = sum(1.0 / len(r["posterior"]) for r in rows)
    mean_size = sum(len(r["posterior"]) for r in rows) / n
    print()
    print(f"Fashion-MNIST, {n} training images, candidate sets at q = {q} (mean |S| = {mean_size:.2f})")
    print(f"{'method':<46}{'true label recovered':>22}")
    print(f"{'random candidate (expected)':<46}{chance:>10.1f} / {n}  {100 * chance / n:5.1f}%")
    print(f"{'zero-shot prior, best candidate':<46}{prior:>10d} / {n}  {100 * prior / n:5.1f}%")
    print(f"{method:<46}{candor:>10d} / {n}  {100 * candor / n:5.1f}%")
    print(f"flagged ambiguous: {sum(r['ambiguous'] for r in rows)}; "
          f"flagged candidates_suspect: {sum(r['candidates_suspect'] for r in rows)}")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(base: str, key: str, tries: int = 600) -> None:
    with Client(base, key, max_retries=0, progress=False) as probe:
        for _ in range(tries):
            try:
                probe.ready()
                return
            except (ConnectionFailed, Unavailable):
                time.sleep(0.2)
    raise SystemExit(f"candor serve did not answer at {base}")


def show_progress(job: Job) -> None:
    p = job.progress
    line = f"  {job.state:<12} {p.done or 0:>5}/{p.total or 0:<5}"
    if p.epoch:
        line += f" epoch {p.epoch}/{p.epochs} loss {p.last_loss:.4f} ETA {p.eta_seconds:.0f} s"
    print(f"\r{line:<78}", end="", flush=True)


def run_service(args, folder: Path, truth: dict[str, str], true_acc: dict[str, float] | None = None) -> None:
    env = os.environ | {"CANDOR_EMBEDDED": "1", "CANDOR_DATA_DIR": str((folder / "service").resolve())}
    candor = [sys.executable, "-m", "app.cli"]
    key = subprocess.run([*candor, "keys", "create", "--tenant", "demo"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    port = free_port()
    server = subprocess.Popen([*candor, "serve", "--embedded", "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        with Client(base, key, timeout=600, progress=False) as client:
            wait_until_up(base, key)
            print(f"$ candor serve --embedded  (API on {base}, database {folder / 'service'})")

            classes = (folder / "classes.txt").read_text().splitlines()
            ds = client.create_dataset("fashion-mnist-demo", classes)
            archive = folder / "upload.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
                zf.write(folder / "manifest.jsonl", "manifest.jsonl")
                for p in sorted((folder / "images").iterdir()):
                    zf.write(p, f"images/{p.name}")
            t = time.monotonic()
            up = client.upload(ds, archive)
            print(f"POST /v1/datasets/{ds.id}/imports: {up.created} created, "
                  f"{up.unchanged} unchanged ({time.monotonic() - t:.1f} s)")  # fmt: skip

            config = {"backbone": args.backbone, "features": {"view": "invert"}, "train": {"seed": args.seed}}
            if args.epochs:
                config["train"]["epochs"] = args.epochs
            job = client.start_job(ds, config)
            print(f"POST /v1/jobs -> 202 {job.id}")
            job = client.wait(job, raise_on_failure=False, on_update=show_progress)
            print()
            if job.state != "succeeded":
                raise SystemExit(f"job {job.state}: {job.error}")
            rows = [r.model_dump() for r in client.labels(job)]
            if true_acc is not None:
                print_crowd_table(rows, truth, client.annotators(job), true_acc)
                return
            cfg = job.config
            method = f"Candor ({cfg['objective']['name']}" + (" + alignment)" if cfg["alignment"]["enabled"] else ")")
            print_table(rows, truth, args.q, method)

            test_images, test_labels = load_fashion_mnist("test")
            pick = np.random.default_rng(args.seed).choice(len(test_labels), size=args.predict, replace=False)
            t = time.monotonic()
            preds = client.predict(job.classifier_id, [Image.fromarray(test_images[i]) for i in pick], top_k=1)
            hits = sum(p.label == FASHION_MNIST_CLASSES[test_labels[i]] for p, i in zip(preds, pick, strict=True))
            seconds = time.monotonic() - t
            print(f"POST /v1/classifiers/{job.classifier_id}/predict on {len(pick)} unseen test images: "
                  f"{hits}/{len(pick)} = {100 * hits / len(pick):.1f}% correct ({seconds:.1f} s)")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_cli(args, folder: Path, truth: dict[str, str]) -> None:
    out = folder / "out"
    cmd = [
        sys.executable, "-m", "app.cli", "clean", str(folder / "manifest.jsonl"),
        "--classes", str(folder / "classes.txt"), "--out", str(out),
        "--backbone", args.backbone, "--view", "invert", "--seed", str(args.seed),
        "--cache", str(folder / "features.sqlite"),
    ]  # fmt: skip
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    method = f"Candor ({cfg['objective']['name']}" + (" + alignment)" if cfg["alignment"]["enabled"] else ")")
    print_table(rows, truth, args.q, method)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="build/demo")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--q", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="offline")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--predict", type=int, default=200, help="unseen test images sent to /predict")
    ap.add_argument("--via", choices=("service", "cli"), default="service")
    ap.add_argument("--crowd", action="store_true", help="annotators' votes instead of drawn candidate sets")
    args = ap.parse_args(argv)
    folder = Path(args.dir)
    if args.crowd:
        truth, true_acc = build_crowd_manifest(folder, args.n, args.seed)
        run_service(args, folder, truth, true_acc)
        return 0
    truth = build_manifest(folder, args.n, args.q, args.seed)
    (run_service if args.via == "service" else run_cli)(args, folder, truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
