"""`candor remote ...`: the command line against a Candor service, built on the client.

    candor remote run photos/ --classes classes.txt --out labels.csv --server URL --key KEY
    candor remote datasets | jobs | classifiers
    candor remote status JOB [--wait]
    candor remote cancel JOB
    candor remote labels JOB --out labels.jsonl [--flag ambiguous] [--max-confidence 0.6] [--order review]
    candor remote annotators JOB --out annotators.json   # or .csv
    candor remote download CLASSIFIER --out DIR
    candor remote predict CLASSIFIER IMAGE...
    candor remote labelstudio-import --project 4 --ls-url URL --ls-token TOKEN   # prints the dataset id
    candor remote labelstudio-push JOB --project 4 --ls-url URL --ls-token TOKEN

The server and key default to $CANDOR_SERVER and $CANDOR_API_KEY.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from candor import sources, tools
from candor.client import Client
from candor.errors import CandorError, JobFailed, WaitTimeout
from candor.formats import IMPORT_FORMATS
from candor.formats import LABEL_FORMATS as FORMATS
from candor.models import Job, JobSummary

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _client(args: argparse.Namespace, progress: bool = True) -> Client:
    log = logging.getLogger("candor.client")
    if not any(isinstance(h, logging.StreamHandler) for h in log.handlers):  # show retries on stderr
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("candor: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
    if not args.key:
        raise CandorError("no API key: pass --key KEY or set CANDOR_API_KEY")
    return Client(args.server, args.key, progress=progress and not getattr(args, "quiet", False))


def _err(message: str) -> None:
    print(f"candor: {message}", file=sys.stderr)


def read_classes(path: Path) -> list[str]:
    """A classes file: one class a line (# comments and blank lines skipped), or JSON ``{"classes": [...]}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CandorError(f"classes file {str(path)!r} cannot be read ({exc.strerror or 'read error'})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CandorError(f"classes file {str(path)!r}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise CandorError(f"classes file {str(path)!r}: expected an object with a 'classes' list")
        return [str(c) for c in data["classes"]]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CandorError(f"config file {args.config!r} cannot be read ({exc.strerror or 'read error'})") from exc
        except json.JSONDecodeError as exc:
            raise CandorError(f"config file {args.config!r}: not valid JSON ({exc.msg})") from exc
        if not isinstance(config, dict):
            raise CandorError(f"config file {args.config!r}: expected a JSON object")
    if args.backbone:
        config["backbone"] = args.backbone
    train = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    if train:
        config["train"] = {**config.get("train", {}), **train}
    return config


def _label_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.out).suffix.lower()
    return {".csv": "csv", ".npz": "pred_probs_npz"}.get(suffix, "jsonl")


def _flag_counts(path: Path, fmt: str) -> tuple[int, int, int]:
    """(rows, ambiguous, candidates_suspect) of a labels file."""
    with path.open(encoding="utf-8", newline="") as f:
        if fmt == "csv":
            rows = list(csv.DictReader(f))
            truthy = ("true", "1")
            amb = sum(r.get("ambiguous", "").lower() in truthy for r in rows)
            sus = sum(r.get("candidates_suspect", "").lower() in truthy for r in rows)
            return len(rows), amb, sus
        parsed = [json.loads(line) for line in f if line.strip()]
    return (
        len(parsed),
        sum(bool(r.get("ambiguous")) for r in parsed),
        sum(bool(r.get("candidates_suspect")) for r in parsed),
    )


def _job_line(job: JobSummary) -> str:
    p = job.progress
    parts = [f"job {job.id}: {job.state}"]
    if job.state not in ("succeeded", "failed", "cancelled"):
        if p.stage and p.stage != job.state:
            parts.append(p.stage)
        if p.epoch and p.epochs:
            parts.append(f"epoch {p.epoch}/{p.epochs}")
            if p.last_loss is not None:
                parts.append(f"loss {p.last_loss:.4f}")
        elif p.total:
            parts.append(f"{p.done or 0}/{p.total}")
        if p.eta_seconds is not None:
            parts.append(f"ETA {p.eta_seconds:.0f} s")
    if job.classifier_id:
        parts.append(f"classifier {job.classifier_id}")
    if job.error:
        parts.append(f"error: {job.error}")
    return "; ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


# ---- commands ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    source = Path(args.source)
    tool = args.import_format
    if args.dataset:
        classes = []
    elif args.classes:
        classes = read_classes(Path(args.classes))
    elif tool != "candor":
        classes = tools.import_classes(source, tool)
    elif source.is_dir() and not (source / "manifest.jsonl").is_file():
        classes = sources.image_folder_classes(source)
    else:
        raise CandorError("--classes FILE is needed unless SOURCE is a folder of class folders (CLASS/ID.png)")
    fmt = _label_format(args)
    if args.name:
        name = args.name
    elif source.is_dir():
        name = source.resolve().name
    else:
        name = source.resolve().parent.name if source.name == "manifest.jsonl" else source.stem
    with _client(args) as client:
        if args.dataset:
            ds = client.get_dataset(args.dataset)
            print(f"dataset {ds.id} ({ds.name}, {len(ds.classes)} classes) on {client.base_url}", file=sys.stderr)
        else:
            ds = client.create_dataset(name, classes)
            print(f"dataset {ds.id} ({name}, {len(classes)} classes) on {client.base_url}", file=sys.stderr)
        try:
            up = client.upload(ds, source, batch_size=args.batch_size, format=tool)
        except CandorError:
            _err(f"the upload stopped; after fixing it, run again with --dataset {ds.id} to add to this dataset")
            raise
        print(f"uploaded {len(up.items)} items: {up.created} created, {up.unchanged} unchanged", file=sys.stderr)
        job = client.start_job(ds, _config(args))
        print(f"job {job.id} started", file=sys.stderr)
        try:
            job = client.wait(job, timeout=args.timeout)
        except WaitTimeout as exc:
            _err(f"error: {exc}; it goes on: candor remote status {exc.job.id}")
            return 1
        out = client.download_labels(job, args.out, format=fmt)
    rows, amb, sus = _flag_counts(out, fmt)
    print(
        f"job {job.id} succeeded: {rows} labels ({amb} ambiguous, {sus} with suspect candidate sets) "
        f"written to {out}; classifier {job.classifier_id}",
        file=sys.stderr,
    )
    return 0


def _list(rows: Any, columns: Callable[[Any], list[str]], as_json: bool, limit: int | None) -> int:
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            break
        print(row.model_dump_json() if as_json else "\t".join(columns(row)))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _list(
            c.list_datasets(),
            lambda d: [str(d.id), d.name, f"{d.class_count} classes", d.created_at.isoformat()],
            args.json,
            args.limit,
        )


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _list(
            c.list_jobs(),
            lambda j: [str(j.id), j.state, f"dataset {j.dataset_id}", j.created_at.isoformat()],
            args.json,
            args.limit,
        )


def cmd_classifiers(args: argparse.Namespace) -> int:
    with _client(args) as c:
        return _list(
            c.list_classifiers(),
            lambda k: [str(k.id), k.backbone, f"{k.class_count} classes", f"job {k.job_id}", k.created_at.isoformat()],
            args.json,
            args.limit,
        )


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job: Job = c.wait(args.job, timeout=args.timeout, raise_on_failure=False) if args.wait else c.get_job(args.job)
    print(job.model_dump_json(indent=2) if args.json else _job_line(job))
    return 0 if not args.wait or job.state == "succeeded" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.cancel_job(args.job)
    print(_job_line(job))
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    fmt = _label_format(args)
    with _client(args) as c:
        out = c.download_labels(
            args.job,
            args.out,
            format=fmt,
            flag=args.flag,
            max_confidence=args.max_confidence,
            order=args.order,
            from_name=args.from_name,
            to_name=args.to_name,
            label_question=args.label_question,
            candidates_question=args.candidates_question,
        )
    if fmt not in ("jsonl", "csv"):
        print(f"wrote the labels as {fmt} to {out}", file=sys.stderr)
        return 0
    rows, amb, sus = _flag_counts(out, fmt)
    print(f"wrote {rows} labels ({amb} ambiguous, {sus} with suspect candidate sets) to {out}", file=sys.stderr)
    return 0


def cmd_annotators(args: argparse.Namespace) -> int:
    fmt = args.format or ("csv" if str(args.out).endswith(".csv") else "json")
    with _client(args) as c:
        out = c.download_annotators(args.job, args.out, format=fmt)
    print(f"wrote the annotators' estimates as {fmt} to {out}", file=sys.stderr)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as c:
        clf = c.get_classifier(args.classifier)
        folder = c.download_classifier(clf, args.out)
    print(
        f"classifier {clf.id} (version {clf.version}, backbone {clf.backbone}, {len(clf.classes)} classes) "
        f"saved in {folder}; use it with: candor predict {folder} IMAGE...",
        file=sys.stderr,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()] if args.candidates else None
    with _client(args) as c:
        preds = c.predict(args.classifier, [Path(p) for p in args.images], top_k=args.top_k, candidates=candidates)
    for path, p in zip(args.images, preds, strict=True):
        print(json.dumps({"image": path, "label": p.label, "top": [t.model_dump() for t in p.top]}))
    return 0


def _ls_token(args: argparse.Namespace) -> str:
    if not args.ls_token:
        raise CandorError("no Label Studio token: pass --ls-token TOKEN or set LABEL_STUDIO_API_KEY")
    return args.ls_token


def cmd_labelstudio_import(args: argparse.Namespace) -> int:
    with _client(args) as c:
        ds, up = c.import_labelstudio(args.dataset, args.ls_url, _ls_token(args), args.project, name=args.name)
    print(
        f"Label Studio project {args.project}: {len(up.items)} tasks into dataset {ds.id} "
        f"({up.created} created, {up.unchanged} unchanged)",
        file=sys.stderr,
    )
    print(ds.id)
    return 0


def cmd_labelstudio_push(args: argparse.Namespace) -> int:
    with _client(args) as c:
        n = c.push_labelstudio(
            args.job, args.ls_url, _ls_token(args), args.project, flag=args.flag, max_confidence=args.max_confidence
        )
    print(f"{n} predictions of job {args.job} imported into Label Studio project {args.project}", file=sys.stderr)
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Service and input errors as one plain line on stderr and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except JobFailed as exc:
            _err(f"error: {exc}")
            return 1
        except (CandorError, zipfile.BadZipFile) as exc:
            _err(f"error: {exc}")
            return 1
        except KeyboardInterrupt:
            _err("interrupted; a started job goes on (candor remote cancel JOB stops it)")
            return 130

    return run


def add_remote_parser(sub: Any) -> None:
    """Add `remote` and its commands to the `candor` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("CANDOR_SERVER", DEFAULT_SERVER),
        help=f"the service's base URL (default $CANDOR_SERVER, else {DEFAULT_SERVER})",
    )
    common.add_argument("--key", default=os.environ.get("CANDOR_API_KEY"), help="API key (default $CANDOR_API_KEY)")

    remote = sub.add_parser("remote", help="drive a Candor service: run a folder end to end, list, status, labels")
    rs = remote.add_subparsers(dest="remote_command", required=True)

    def command(
        name: str, func: Callable[[argparse.Namespace], int], help: str, *more: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        p = rs.add_parser(name, parents=[common, *more], help=help, description=help)
        p.set_defaults(func=_guarded(func))
        return p

    r = command("run", cmd_run, "upload a folder, manifest or ZIP, run a job, wait, write the labels")
    r.add_argument("source", help="folder (CLASS/ID.png, or images + manifest.jsonl), manifest.jsonl or ZIP")
    r.add_argument(
        "--classes",
        help="classes file (one a line, or JSON {classes: [...]}); default: the class folders, or what the "
        "--import-format export names",
    )
    r.add_argument(
        "--import-format",
        choices=tuple(IMPORT_FORMATS),
        default="candor",
        help="SOURCE's layout: candor (default), fiftyone-tree, fiftyone or argilla (a tool's export folder or ZIP)",
    )
    r.add_argument("--out", required=True, help="labels file to write (.csv or .jsonl)")
    r.add_argument("--format", choices=("jsonl", "csv"), help="labels format (default: from --out's suffix)")
    r.add_argument("--name", help="dataset name (default: the source's name)")
    r.add_argument("--dataset", help="upload into this existing dataset instead of a new one (a re-run after a fix)")
    r.add_argument("--config", help="job config as JSON (`candor config` prints the defaults)")
    r.add_argument("--backbone", help="offline (default) | tiny | openclip:MODEL[:PRETRAINED]")
    r.add_argument("--epochs", type=int, help="training epochs")
    r.add_argument("--seed", type=int, help="random seed")
    r.add_argument("--batch-size", type=int, default=100, help="items per upload request (default 100)")
    r.add_argument("--timeout", type=float, help="seconds to wait for the job (default: as long as it takes)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    for name, func, what in (
        ("datasets", cmd_datasets, "list the datasets, newest first"),
        ("jobs", cmd_jobs, "list the jobs, newest first"),
        ("classifiers", cmd_classifiers, "list the classifiers, newest first"),
    ):
        p = command(name, func, what)
        p.add_argument("--limit", type=int, help="at most this many")
        p.add_argument("--json", action="store_true", help="one JSON object a line")

    s = command("status", cmd_status, "a job's state and progress")
    s.add_argument("job")
    s.add_argument("--wait", action="store_true", help="wait until it ends, with a progress bar")
    s.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    s.add_argument("--json", action="store_true", help="the whole job as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    c = command("cancel", cmd_cancel, "cancel a job")
    c.add_argument("job")

    lb = command("labels", cmd_labels, "write a finished job's labels to a file")
    lb.add_argument("job")
    lb.add_argument("--out", required=True, help="labels file to write (.csv, .jsonl or .json)")
    lb.add_argument(
        "--format",
        choices=tuple(FORMATS),
        help="default: from --out's suffix (csv, npz, else jsonl); labelstudio, argilla, fiftyone, pred_probs: "
        "JSON; pred_probs_npz: NumPy arrays",
    )
    lb.add_argument(
        "--from-name",
        help="--format labelstudio: the <Choices> name (default: the one a Label Studio import recorded, else choice)",
    )
    lb.add_argument(
        "--to-name",
        help="--format labelstudio: the <Image> name (default: the one a Label Studio import recorded, else image)",
    )
    lb.add_argument(
        "--label-question", help="--format argilla: the single-label question the label answers (default: label)"
    )
    lb.add_argument(
        "--candidates-question",
        help="--format argilla: the multi-label question the ranked candidates answer (default: candidates)",
    )
    lb.add_argument("--flag", choices=("ambiguous", "candidates_suspect"), help="only the rows with this flag")
    lb.add_argument("--max-confidence", type=float, help="only the rows at most this confident")
    lb.add_argument("--order", choices=("review",), help="review: the review queue's order, most worth a look first")

    ls = argparse.ArgumentParser(add_help=False)
    ls.add_argument(
        "--ls-url",
        default=os.environ.get("LABEL_STUDIO_URL", "http://127.0.0.1:8080"),
        help="Label Studio's URL (default $LABEL_STUDIO_URL, else http://127.0.0.1:8080)",
    )
    ls.add_argument(
        "--ls-token",
        default=os.environ.get("LABEL_STUDIO_API_KEY"),
        help="a Label Studio personal access token or legacy token (default $LABEL_STUDIO_API_KEY)",
    )
    ls.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    li = command(
        "labelstudio-import",
        cmd_labelstudio_import,
        "read a Label Studio project (export, labeling config, images) into a dataset; prints its id",
        ls,
    )
    li.add_argument("--dataset", help="into this dataset (default: a new one whose classes are the config's choices)")
    li.add_argument("--name", help="the new dataset's name (default: labelstudio-PROJECT)")
    lp = command(
        "labelstudio-push",
        cmd_labelstudio_push,
        "import a finished job's labels into a Label Studio project as predictions",
        ls,
    )
    lp.add_argument("job")
    lp.add_argument("--flag", choices=("ambiguous", "candidates_suspect"), help="only the rows with this flag")
    lp.add_argument("--max-confidence", type=float, help="only the rows at most this confident")
    an = command("annotators", cmd_annotators, "write a finished job's per-annotator estimates to a file")
    an.add_argument("job")
    an.add_argument("--out", required=True, help="file to write (.csv or .json)")
    an.add_argument("--format", choices=("json", "csv"), help="default: from --out's suffix (csv, else json)")

    d = command("download", cmd_download, "save a classifier the service trained (for `candor predict`)")
    d.add_argument("classifier")
    d.add_argument("--out", required=True, help="folder to write classifier.safetensors and classifier.json into")

    p = command("predict", cmd_predict, "classify images with a classifier of the service")
    p.add_argument("classifier")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--candidates", help="comma-separated classes to restrict the answer to")
