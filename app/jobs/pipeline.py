"""The worker side of a job: start -> featurise chunks (in parallel) -> train -> store outputs.

Each step is idempotent: it re-reads the job's state from the database, acts only when the state
says the step is due, and enqueues the next step after its own commit. A redelivered message
finds the work done (or the job terminal) and returns; a killed training task resumes from the
last epoch's checkpoint. Every step renews the job's lease while it runs (:mod:`app.jobs.leases`),
so the reaper can tell a dead worker from a slow one, and retries database errors with backoff
(``CANDOR_DB_RETRY_SECONDS``), so a job runs through a short database outage.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid

import numpy as np
import safetensors.torch
import torch
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.classifiers.models import ClassifierRow
from app.core.db import TRANSIENT_DB_ERRORS, get_sessionmaker, retry_db, session_scope, utcnow
from app.core.registry import get_backbone
from app.core.settings import get_settings
from app.core.uow import after_commit
from app.datasets import repository as datasets_repo
from app.datasets.models import Dataset
from app.jobs import dispatch, leases, states
from app.jobs import repository as repo
from app.jobs.leases import Heartbeat, LeaseLost
from app.jobs.models import Job, JobAnnotator, JobChunk, JobResult, result_row
from app.ml.config import CleanConfig
from app.ml.crossval import out_of_sample
from app.ml.crowd import Votes
from app.ml.engine import outputs
from app.ml.features import ImageRef, decode_image, featurize
from app.ml.review import ranks, review_row
from app.ml.trainer import Cancelled, Checkpoint, Hooks, Progress, train
from app.review.service import reviewed_candidates

log = logging.getLogger("candor.pipeline")


def _job(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def _finish_cancel(session: Session, job_id: uuid.UUID) -> None:
    states.finish(session, job_id, states.CANCELLED)


def _fail(job_id: uuid.UUID, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"[:4000]
    log.error("job %s failed: %s", job_id, message)
    with session_scope() as session:
        if not states.finish(session, job_id, states.FAILED, error=message):
            job = _job(session, job_id)
            if job is not None and job.state == states.CANCELLING:
                _finish_cancel(session, job_id)


def _cancel_now(jid: uuid.UUID) -> None:
    with session_scope() as session:
        _finish_cancel(session, jid)


def _step(fn=None, *, beats: bool = True):
    """A task body: it renews the job's lease while it runs (``beats``; training holds its own,
    fenced lease), retries database outages with backoff, records failures on the job (then
    re-raises them for the worker's log) and ends a cancelled training as cancelled. A step whose
    job was handed to another delivery stops quietly. A failure that cannot be recorded (the
    database stayed down) leaves the job to the reaper."""
    if fn is None:
        return functools.partial(_step, beats=beats)

    @functools.wraps(fn)
    def run(job_id: str, *args) -> None:
        jid = uuid.UUID(job_id)
        try:
            if beats:
                with Heartbeat(jid):
                    retry_db(lambda: fn(jid, *args), what=f"job {jid}: {fn.__name__}")
            else:
                retry_db(lambda: fn(jid, *args), what=f"job {jid}: {fn.__name__}")
        except LeaseLost:
            log.info("job %s: %s stopped, the job was handed to another delivery", jid, fn.__name__)
        except Cancelled:
            retry_db(lambda: _cancel_now(jid), what=f"job {jid}: cancel")
        except Exception as exc:
            retry_db(functools.partial(_fail, jid, exc), what=f"job {jid}: record failure")
            raise

    return run


def _due(session: Session, jid: uuid.UUID, state: str) -> Job | None:
    """The job when it is in ``state``; a job asked to cancel meanwhile is finished as cancelled."""
    job = _job(session, jid)
    if job is not None and job.state == states.CANCELLING:
        _finish_cancel(session, jid)
        return None
    return job if job is not None and job.state == state else None


@_step
def start_job(jid: uuid.UUID) -> None:
    with session_scope() as session:
        job = _job(session, jid)
        if job is None:
            return
        if job.state == states.CANCELLING:
            _finish_cancel(session, jid)
            return
        claimed = states.transition(
            session, jid, states.FEATURIZING, started_at=utcnow(),
            progress={"stage": "featurizing", "done": 0, "total": 0},
        )  # fmt: skip
        cfg = CleanConfig.model_validate(job.config)
        dataset_id, tenant_id, seq_max = job.dataset_id, job.tenant_id, job.item_seq_max
        if not claimed:
            if job.state != states.FEATURIZING:
                return  # a redelivery after the job moved on
            # A redelivery while featurising: the first delivery died after claiming. Re-send the
            # chunks not yet done (counted once however often they run), or plan them if none exist.
            pending = session.scalars(
                select(JobChunk.index).where(JobChunk.job_id == jid, JobChunk.done.is_(False))
            ).all()
            planned = session.scalar(select(JobChunk.index).where(JobChunk.job_id == jid).limit(1)) is not None
            for i in pending:
                after_commit(session, lambda i=i: dispatch.send(dispatch.FEATURIZE, jid, i))
            if planned:
                return
    backbone = get_backbone(cfg.backbone)  # may take a while; the job already shows 'featurizing'
    try:
        _plan(jid, cfg, backbone, dataset_id, tenant_id, seq_max)
    except IntegrityError:
        log.info("job %s: another delivery planned the chunks first", jid)


def _plan(jid: uuid.UUID, cfg: CleanConfig, backbone, dataset_id, tenant_id, seq_max: int) -> None:
    """Chunk the images that have no cached features; a concurrent duplicate fails on the chunk keys."""
    with session_scope() as session:
        items = datasets_repo.dataset_items(session, dataset_id, seq_max)
        hashes = list(dict.fromkeys(i.image_sha256 for i in items))
        missing = repo.missing_features(session, tenant_id, backbone.id, cfg.features.view, hashes)
        size = get_settings().feature_chunk_size
        chunks = [missing[i : i + size] for i in range(0, len(missing), size)]
        session.add_all(JobChunk(job_id=jid, index=i, hashes=c) for i, c in enumerate(chunks))
        session.flush()
        session.execute(
            update(Job)
            .where(Job.id == jid, Job.state == states.FEATURIZING)
            .values(
                backbone_id=backbone.id,
                chunks_total=len(chunks),
                chunks_done=0,
                progress={"stage": "featurizing", "done": len(hashes) - len(missing), "total": len(hashes)},
            )
        )
        if chunks:
            for i in range(len(chunks)):
                after_commit(session, lambda i=i: dispatch.send(dispatch.FEATURIZE, jid, i))
        else:
            _to_training(session, jid)


def _to_training(session: Session, jid: uuid.UUID) -> None:
    if states.transition(session, jid, states.TRAINING, progress={"stage": "training"}, lease_owner=None):
        after_commit(session, lambda: dispatch.send(dispatch.TRAIN, jid))
    elif session.scalar(select(Job.state).where(Job.id == jid)) == states.CANCELLING:
        _finish_cancel(session, jid)  # cancelled while the last chunk ran: nothing else would finish it


@_step
def featurize_chunk(jid: uuid.UUID, index: int) -> None:
    with session_scope() as session:
        job = _due(session, jid, states.FEATURIZING)
        if job is None:
            return
        chunk = session.get(JobChunk, (jid, int(index)))
        if chunk is None or chunk.done:
            return
        cfg = CleanConfig.model_validate(job.config)
        tenant_id, hashes = job.tenant_id, list(chunk.hashes)
        chunk.attempts += 1
        attempts, limit = chunk.attempts, get_settings().job_max_attempts
    if attempts > limit:  # each earlier delivery died on this chunk (an out-of-memory kill, say)
        raise RuntimeError(
            f"featurisation chunk {index} was started {attempts} times and never finished; "
            f"its worker died each time (limit CANDOR_JOB_MAX_ATTEMPTS={limit})"
        )
    backbone = get_backbone(cfg.backbone)
    with session_scope() as session:
        blobs = datasets_repo.image_bytes(session, tenant_id, hashes)
    refs = [ImageRef(f"image {h[:12]}", h, lambda d=blobs[h], h=h: decode_image(d, f"image {h[:12]}")) for h in hashes]
    featurize(
        backbone,
        refs,
        repo.DbFeatureStore(get_sessionmaker(), tenant_id),
        view=cfg.features.view,
        batch_size=cfg.features.batch_size,
    )
    with session_scope() as session:
        counted = repo.mark_chunk_done(session, jid, int(index))
        if counted is None:
            return
        done, total = counted
        job = _job(session, jid)
        progress = dict(job.progress or {})
        progress["done"] = min(int(progress.get("done", 0)) + len(hashes), int(progress.get("total", 0)))
        session.execute(update(Job).where(Job.id == jid, Job.state == states.FEATURIZING).values(progress=progress))
        if done == total:
            _to_training(session, jid)


class _JobHooks:
    """Progress writes, cancel and lease checks (both throttled) and per-epoch checkpoints in the
    database, all made only while this delivery holds the job's lease. A database outage skips a
    write instead of stopping the training; the next one catches up."""

    def __init__(self, jid: uuid.UUID, interval: float, lease: Heartbeat):
        self.jid = jid
        self.interval = interval
        self.lease = lease
        self._last_write = 0.0
        self._last_check = 0.0
        self._cancel = False

    def _write(self, what: str, **values) -> None:
        try:
            with session_scope() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == self.jid, Job.state == states.TRAINING, Job.lease_owner == self.lease.owner)
                    .values(**values)
                )
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("job %s: %s not written (%s)", self.jid, what, type(exc).__name__)

    def on_step(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self._last_write < self.interval and p.step != p.steps:
            return
        self._last_write = now
        progress = {
            "stage": "training",
            "done": p.epoch * p.steps + p.step,
            "total": p.epochs * p.steps,
            "epoch": p.epoch + 1,
            "epochs": p.epochs,
            "last_loss": round(p.loss, 6),
            "eta_seconds": round(p.eta_seconds, 1),
        }
        self._write("progress", progress=progress, updated_at=utcnow())

    def should_cancel(self) -> bool:
        if self.lease.lost:
            raise LeaseLost()
        now = time.monotonic()
        if not self._cancel and now - self._last_check >= self.interval:
            self._last_check = now
            try:
                with session_scope() as session:
                    row = session.execute(select(Job.state, Job.lease_owner).where(Job.id == self.jid)).one()
            except TRANSIENT_DB_ERRORS:
                return False  # asked again at the next check
            if row.state == states.TRAINING and row.lease_owner != self.lease.owner:
                raise LeaseLost()
            self._cancel = row.state != states.TRAINING
        return self._cancel

    def on_fold(self, fold: int, folds: int) -> None:
        progress = {"stage": "training", "done": fold, "total": folds, "epoch": None, "epochs": None}
        self._write("progress", progress=progress, updated_at=utcnow())

    def on_epoch_end(self, ckpt: Checkpoint) -> None:
        tensors, meta = ckpt.tensors()
        self._write("checkpoint", checkpoint=safetensors.torch.save(tensors), checkpoint_meta=meta)


@_step(beats=False)
def train_job(jid: uuid.UUID) -> None:
    owner = leases.new_owner()
    with session_scope() as session:
        job = _due(session, jid, states.TRAINING)
        if job is None:
            return
        if not leases.claim_training(session, jid, owner):
            log.info("job %s: another delivery holds a live lease on its training", jid)
            return
        cfg = CleanConfig.model_validate(job.config)
        dataset = session.get(Dataset, job.dataset_id)
        classes = list(dataset.classes)
        rows = datasets_repo.dataset_items(session, job.dataset_id, job.item_seq_max)
        # decisions made before the job was created: a reviewed class is a set of one, "none of
        # these" leaves the classes outside the set
        reviewed = reviewed_candidates(session, job.dataset_id, classes, rows, job.created_at)
        items = [(i.seq, i.external_id, i.image_sha256, reviewed.get(i.seq, list(i.candidates))) for i in rows]
        # a person's decision outranks the annotators: a reviewed item's votes do not enter the job
        annotations = [None if i.seq in reviewed else i.annotations for i in rows]
        blob = session.scalar(select(Job.checkpoint).where(Job.id == jid))
        resume = Checkpoint.from_tensors(safetensors.torch.load(blob), job.checkpoint_meta) if blob else None
        tenant_id, dataset_id = job.tenant_id, job.dataset_id
    with Heartbeat(jid, owner) as lease:  # from the claim on: loading the backbone may take a while
        _train(jid, lease, cfg, classes, items, resume, tenant_id, dataset_id, annotations)


def _train(
    jid: uuid.UUID, lease: Heartbeat, cfg: CleanConfig, classes, items, resume, tenant_id, dataset_id, annotations
) -> None:
    backbone = get_backbone(cfg.backbone)
    store = repo.DbFeatureStore(get_sessionmaker(), tenant_id)
    hashes = [sha for _, _, sha, _ in items]
    cached = store.get_many(backbone.id, cfg.features.view, hashes)
    missing = [h for h in hashes if h not in cached]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no features for {backbone.id}; re-run the job")
    features = torch.from_numpy(np.stack([cached[h] for h in hashes]))
    index = {c: k for k, c in enumerate(classes)}
    mask = torch.zeros(len(items), len(classes))
    for row, (_, _, _, cands) in enumerate(items):
        mask[row, [index[c] for c in cands]] = 1.0
    hooks = _JobHooks(jid, get_settings().progress_interval, lease)
    votes = Votes.from_annotations(annotations, index)
    result = train(
        backbone,
        classes,
        features,
        mask,
        cfg,
        hooks=Hooks(on_step=hooks.on_step, on_epoch_end=hooks.on_epoch_end, should_cancel=hooks.should_cancel),
        resume=resume,
        votes=votes,
    )
    out = outputs(backbone, [x for _, x, _, _ in items], classes, mask, cfg, result)
    oos = None
    if cfg.cross_validation.folds:
        oos = out_of_sample(
            backbone,
            classes,
            features,
            mask,
            cfg,
            cfg.cross_validation.folds,
            should_cancel=hooks.should_cancel,
            on_fold=hooks.on_fold,
            votes=votes,
        )
        oos = [[round(float(p), 6) for p in row] for row in oos]
    retry_db(
        lambda: _store(jid, lease.owner, tenant_id, dataset_id, classes, items, out, oos), what=f"job {jid}: results"
    )


def _store(jid: uuid.UUID, owner: str, tenant_id, dataset_id, classes: list[str], items: list, out, oos=None) -> None:
    """Results, classifier and the terminal state in one transaction, by the lease's owner only."""
    classifier, metrics = out.classifier, out.metrics
    with session_scope() as session:
        if not states.finish(session, jid, states.SUCCEEDED, owner=owner, metrics=metrics, checkpoint=None):
            state = session.scalar(select(Job.state).where(Job.id == jid))
            if state == states.CANCELLING:
                _finish_cancel(session, jid)
            return
        review = ranks([review_row(r) for r in out.items])
        session.execute(
            JobResult.__table__.insert(),
            [
                result_row(jid, seq, r, review[n], None if oos is None else oos[n])
                for n, ((seq, _, _, _), r) in enumerate(zip(items, out.items, strict=True))
            ],
        )
        if out.train.votes is not None:
            session.execute(
                JobAnnotator.__table__.insert(),
                [{"job_id": jid} | a.to_dict(classes) for a in out.train.votes.annotators],
            )
        session.add(
            ClassifierRow(
                tenant_id=tenant_id,
                job_id=jid,
                dataset_id=dataset_id,
                version=classifier.version,
                backbone=classifier.backbone,
                backbone_id=classifier.backbone_id,
                classes=classes,
                metrics=classifier.metrics,
                artifact=classifier.to_bytes(),
            )
        )
