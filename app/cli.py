"""`candor` command line: clean a candidate-labelled dataset, predict with a classifier."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from app import exports
from app.ml.backbones.registry import spec_help
from app.ml.config import OBJECTIVES, CleanConfig
from app.ml.objective_registry import objective_help

# --alignment choices: the config's alignment fields each sets ("on" and "auto" keep the configured mode).
ALIGNMENT_CHOICES: dict[str, dict] = {
    "off": {"enabled": False},
    "paper": {"enabled": True, "mode": "paper", "auto_trust": False},
    "paper-auto": {"enabled": True, "mode": "paper", "auto_trust": True},
    "on": {"enabled": True, "auto_trust": False},
    "auto": {"enabled": True, "auto_trust": True},
}


def default_cache_path() -> Path:
    base = os.environ.get("CANDOR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "candor")
    return Path(base) / "features.sqlite"


def build_config(args: argparse.Namespace) -> CleanConfig:
    """The typed config: --config FILE first, then the explicit flags on top."""
    from app.ml.data import InputError

    cfg = CleanConfig()
    if args.config:
        try:
            cfg = CleanConfig.model_validate_json(Path(args.config).read_text())
        except OSError as exc:
            raise InputError(f"config file {args.config!r}: {exc.strerror}") from exc
        except ValueError as exc:
            raise InputError(f"config file {args.config!r}: {exc}") from exc
    overrides: dict = {}
    if args.preset:
        overrides["preset"] = args.preset
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.objective:
        overrides["objective"] = {"name": args.objective}
    if args.alignment:
        overrides["alignment"] = ALIGNMENT_CHOICES[args.alignment]
    train = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if v is not None}
    if train:
        overrides["train"] = train
    if args.view:
        overrides["features"] = {"view": args.view}
    return cfg.with_overrides(**overrides) if overrides else cfg


def cmd_clean(args: argparse.Namespace) -> int:
    from app.ml.backbones import parse_spec
    from app.ml.data import read_classes, read_manifest
    from app.ml.engine import annotator_report, clean
    from app.ml.features import SqliteFeatureStore

    cfg = build_config(args)
    parse_spec(cfg.backbone)
    classes = read_classes(args.classes)
    from app.ml.votes import CandidatePolicy

    policy = CandidatePolicy(min_votes=args.min_votes, ground_truth_wins=not args.votes_over_ground_truth)
    dataset = read_manifest(args.manifest, classes, policy)
    store = SqliteFeatureStore(args.cache or default_cache_path())
    out = clean(dataset, cfg, store=store, progress=not args.quiet)

    # Everything is computed; write the outputs into a fresh folder, then move them into place.
    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".candor-", dir=target))
    try:
        with (staging / "results.jsonl").open("wb") as f:
            exports.write_jsonl((item.to_dict() for item in out.items), f)
        (staging / "metrics.json").write_text(json.dumps(out.metrics, indent=2) + "\n")
        if out.train.votes is not None:
            report = {"classes": classes, "annotators": annotator_report(out, classes)}
            (staging / "annotators.json").write_text(json.dumps(report, indent=2) + "\n")
        (staging / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
        out.classifier.save(staging / "classifier")
        for entry in staging.iterdir():
            dest = target / entry.name
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            entry.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    n = len(out.items)
    flagged = sum(i.ambiguous for i in out.items)
    suspect = sum(i.candidates_suspect for i in out.items)
    print(
        f"cleaned {n} items: {flagged} ambiguous, {suspect} with suspect candidate sets; "
        f"wrote {target / 'results.jsonl'} and {target / 'classifier'}",
        file=sys.stderr,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from app.ml.artifacts import Classifier
    from app.ml.backbones import load_backbone
    from app.ml.data import InputError
    from app.ml.features import decode_image

    clf = Classifier.load(args.artifact)
    images = []
    for path in args.images:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"image {path!r} does not exist")
        images.append(decode_image(p.read_bytes(), f"image {path!r}"))
    backbone = load_backbone(clf.backbone)
    candidates = [c.strip() for c in args.candidates.split(",")] if args.candidates else None
    preds = clf.predict(backbone, images, top_k=args.top_k, candidates=candidates)
    for path, top in zip(args.images, preds, strict=True):
        print(json.dumps({"image": path, "label": top[0][0], "top": [{"label": c, "p": p} for c, p in top]}))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.schema:
        print(json.dumps(CleanConfig.model_json_schema(), indent=2))
    else:
        print(CleanConfig().model_dump_json(indent=2))
    return 0


def service_settings(args: argparse.Namespace):
    """The settings `serve`, `keys create` and `db upgrade` share: `--embedded` switches to embedded mode
    (SQLite in CANDOR_DATA_DIR) exactly as CANDOR_EMBEDDED=1 does, so the same flags and environment
    always name the same database."""
    if args.embedded:
        os.environ["CANDOR_EMBEDDED"] = "1"
    from app.core.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def database_label(url: str) -> str:
    """Where a database URL points, fit to print: the file of a SQLite database, else the URL without
    its password."""
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return f"SQLite {u.database}"
    shown = URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query)
    return shown.render_as_string(hide_password=False)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = service_settings(args)
    import uvicorn

    from app.core.migrate import upgrade

    if not args.no_migrate:
        upgrade(settings.effective_database_url)
    from app.main import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from worker.celery_app import celery_app

    # The in-memory scheduler: one periodic task, nothing worth a schedule file on disk.
    celery_app.start(["beat", "--loglevel", args.log_level.upper(), "--scheduler", "celery.beat:Scheduler"])
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import celery_app

    argv = ["worker", "--queues", args.queues, "--loglevel", args.log_level.upper()]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if "gpu" in args.queues.split(","):
        argv += ["--pool", "solo"]
    celery_app.worker_main(argv)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    settings = service_settings(args)
    from app.core.db import session_scope
    from app.core.migrate import upgrade
    from app.core.security import create_key

    url = settings.effective_database_url
    upgrade(url)
    with session_scope() as session:
        tenant, key = create_key(session, args.tenant)
        print(f"tenant {tenant.name} ({tenant.id}) in {database_label(url)}; this key is shown once:", file=sys.stderr)
    print(key)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = service_settings(args)
    from app.core.migrate import upgrade

    url = settings.effective_database_url
    upgrade(url)
    print(f"{database_label(url)} is at the latest migration", file=sys.stderr)
    return 0


def cmd_labelstudio_rekey(args: argparse.Namespace) -> int:
    settings = service_settings(args)
    from app.core.db import session_scope
    from app.labelstudio.tokens import TokenError, rekey

    try:
        with session_scope() as session:
            sealed, unreadable = rekey(session)
    except TokenError as exc:
        print(f"candor: error: {exc}", file=sys.stderr)
        return 2
    where = database_label(settings.effective_database_url)
    print(f"{sealed} Label Studio tokens in {where} sealed with the first key of CANDOR_LABELSTUDIO_TOKEN_KEYS",
          file=sys.stderr)  # fmt: skip
    if unreadable:
        print(f"{unreadable} tokens no key opens were left as they are: save those connections again with their "
              "tokens", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="candor", description="Clean candidate-label image annotations.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("clean", help="learn from a candidate-label manifest; write labels and a classifier")
    c.add_argument("manifest", help="JSONL: {id, image (relative path), candidates: [class, ...]} per line")
    c.add_argument("--classes", required=True, help='text file, one class a line (or JSON {"classes": [...]})')
    c.add_argument("--out", required=True, help="output folder: results.jsonl, metrics.json, classifier/")
    c.add_argument("--backbone", help=f"{spec_help()} (default offline; docs/backbones.md)")
    c.add_argument("--objective", choices=OBJECTIVES, help=objective_help())
    c.add_argument(
        "--alignment",
        choices=tuple(ALIGNMENT_CHOICES),
        help="prompt alignment with the handcrafted prompt. paper: the paper's rule exactly (the objective "
        "unchanged plus an alignment loss of equal size); paper-auto: the same, its weight scaled by the prior's "
        "label-free trust; auto (default): Candor's mixed target (alignment.mode 'target' unless --config says "
        "otherwise), the prior trusted as far as the candidate sets show it deserves; on: the same, the prior "
        "fully trusted; off: none. See docs/method.md",
    )
    c.add_argument(
        "--preset",
        choices=("offline", "coop"),
        help="training recipe: offline (default; AdamW, cosine per step, tuned on the offline backbone) or coop "
        "(CoOp's and the paper's: SGD lr 0.002 momentum 0.9, weight decay 5e-4, one warm-up epoch, cosine per epoch; "
        "for CLIP checkpoints); applied over --config, under the other flags",
    )
    c.add_argument("--epochs", type=int, help="training epochs (default 20)")
    c.add_argument("--seed", type=int, help="random seed (default 0)")
    c.add_argument("--view", choices=("plain", "invert"), help="image view; invert for light-on-dark images")
    c.add_argument("--config", help="typed config as JSON (`candor config` prints the defaults); flags override it")
    c.add_argument("--cache", help="feature cache file (default $CANDOR_CACHE_DIR/features.sqlite)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument(
        "--min-votes",
        type=_at_least_one,
        default=1,
        help="for lines with annotations and no candidates: a label enters the set with this many votes (default 1)",
    )
    c.add_argument(
        "--votes-over-ground-truth",
        action="store_true",
        help="derive the set from the votes even where an annotation is flagged ground_truth",
    )
    c.set_defaults(func=cmd_clean)

    pr = sub.add_parser("predict", help="classify images with a classifier folder written by `clean`")
    pr.add_argument("artifact", help="classifier folder (classifier.safetensors + classifier.json)")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument("--candidates", help="comma-separated classes to restrict the answer to")
    pr.set_defaults(func=cmd_predict)

    cf = sub.add_parser("config", help="print the default config as JSON (a starting point for --config)")
    cf.add_argument("--schema", action="store_true", help="print the JSON Schema with every field's description")
    cf.set_defaults(func=cmd_config)

    sv = sub.add_parser("serve", help="run the HTTP API (applies database migrations first)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--embedded", action="store_true", help="SQLite + an in-process worker: no PostgreSQL, no Redis")
    sv.add_argument("--no-migrate", action="store_true", help="do not run `alembic upgrade head` at start")
    sv.add_argument("--log-level", default="info")
    sv.set_defaults(func=cmd_serve)

    wk = sub.add_parser("worker", help="run a Celery worker")
    wk.add_argument("--queues", default="cpu,gpu", help="comma-separated: cpu (featurisation), gpu (training)")
    wk.add_argument("--concurrency", type=int, help="worker processes (gpu queue: always one, solo pool)")
    wk.add_argument("--log-level", default="info")
    wk.set_defaults(func=cmd_worker)

    bt = sub.add_parser("beat", help="run the scheduler that sends the job reaper (one per deployment)")
    bt.add_argument("--log-level", default="info")
    bt.set_defaults(func=cmd_beat)

    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    kc = keys_sub.add_parser("create", help="create a key for a tenant (created if new); prints it once")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--embedded", action="store_true", help="write to the database `candor serve --embedded` reads")
    kc.set_defaults(func=cmd_keys_create)

    db = sub.add_parser("db", help="database")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    du = db_sub.add_parser("upgrade", help="apply all migrations")
    du.add_argument("--embedded", action="store_true", help="migrate the database `candor serve --embedded` uses")
    du.set_defaults(func=cmd_db_upgrade)

    ls = sub.add_parser("labelstudio", help="the Label Studio ML backend's stored connections")
    ls_sub = ls.add_subparsers(dest="labelstudio_command", required=True)
    lr = ls_sub.add_parser(
        "rekey", help="seal every stored Label Studio token with the first key of CANDOR_LABELSTUDIO_TOKEN_KEYS"
    )
    lr.add_argument("--embedded", action="store_true", help="the database `candor serve --embedded` uses")
    lr.set_defaults(func=cmd_labelstudio_rekey)

    from candor.cli import add_remote_parser

    add_remote_parser(sub)  # `candor remote ...`: the same work against a Candor service
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from sqlalchemy.exc import OperationalError

    from app.ml.artifacts import ArtifactError
    from app.ml.backbones import BackboneUnavailable
    from app.ml.data import InputError
    from app.ml.features import ImageError

    try:
        return args.func(args)
    except (InputError, ImageError, ArtifactError, BackboneUnavailable, ValueError) as exc:
        print(f"candor: error: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        # The database is down or unreachable: say where and why in one line, not a traceback.
        from app.core.settings import get_settings

        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else "it did not answer"
        where = database_label(get_settings().effective_database_url)
        print(f"candor: error: cannot reach the database {where}: {reason}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
