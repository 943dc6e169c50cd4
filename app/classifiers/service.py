from __future__ import annotations

import base64
import binascii
import io
import tempfile
import time
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Row, delete, select
from sqlalchemy.orm import Session

from app.classifiers.models import ClassifierRow
from app.classifiers.schemas import Prediction, PredictResponse, Scored
from app.core import jsonsql, pagination, registry
from app.core.problems import Problem, not_found
from app.core.security import TenantRef
from app.core.settings import get_settings
from app.ml.artifacts import ArtifactError, Classifier
from app.ml.features import ImageError, decode_image, header_pixels
from app.ml.text import show, text_problem


def list_classifiers(session: Session, tenant: TenantRef, cursor: str | None, limit: int) -> Sequence[Row]:
    """A page of the tenant's classifiers, newest first: the summary's columns only (the class list,
    metrics and artifact stay in the database)."""
    stmt = select(
        ClassifierRow.id,
        ClassifierRow.job_id,
        ClassifierRow.dataset_id,
        ClassifierRow.version,
        ClassifierRow.backbone,
        ClassifierRow.backbone_id,
        jsonsql.array_length(session, ClassifierRow.classes).label("class_count"),
        ClassifierRow.created_at,
    ).where(ClassifierRow.tenant_id == tenant.id)
    stmt = pagination.newest_first(stmt, ClassifierRow.created_at, ClassifierRow.id, cursor, limit)
    return session.execute(stmt).all()


def require_classifier(session: Session, tenant: TenantRef, classifier_id: uuid.UUID) -> ClassifierRow:
    row = session.scalar(
        select(ClassifierRow).where(ClassifierRow.id == classifier_id, ClassifierRow.tenant_id == tenant.id)
    )
    if row is None:
        raise not_found("classifier", classifier_id)
    return row


def owned_classifier(
    session: Session, tenant: TenantRef, classifier_id: uuid.UUID
) -> tuple[uuid.UUID, str, Classifier]:
    """(id, version, artifact) of a tenant's classifier for /predict. Classifiers are immutable, so
    the ownership check and the artifact are cached together after the first request."""

    def load() -> tuple[uuid.UUID, str, Classifier] | None:
        row = session.execute(
            select(ClassifierRow.id, ClassifierRow.version, ClassifierRow.artifact).where(
                ClassifierRow.id == classifier_id, ClassifierRow.tenant_id == tenant.id
            )
        ).one_or_none()
        return None if row is None else (row[0], row[1], Classifier.from_bytes(row[2]))

    key = (tenant.id, classifier_id)
    loaded = False

    def load_now() -> tuple[uuid.UUID, str, Classifier] | None:
        nonlocal loaded
        loaded = True
        return load()

    found = registry.classifiers.get(key, load_now)
    if found is not None and not loaded and _stale(key):
        # a cached classifier another process may have deleted: look again, as often as keys are
        found = found if _exists(session, tenant, classifier_id) else None
    if found is None:
        registry.classifiers.discard(key)
        _checked.pop(key, None)
        raise not_found("classifier", classifier_id)
    _checked.setdefault(key, time.monotonic())
    return found


_checked: dict[tuple[uuid.UUID, uuid.UUID], float] = {}  # when a cached classifier was last seen in the database


def _stale(key: tuple[uuid.UUID, uuid.UUID]) -> bool:
    ttl = get_settings().auth_cache_seconds
    now = time.monotonic()
    if now - _checked.get(key, 0.0) < ttl:
        return False
    if len(_checked) > 10_000:
        _checked.clear()
    _checked[key] = now
    return True


def _exists(session: Session, tenant: TenantRef, classifier_id: uuid.UUID) -> bool:
    stmt = select(ClassifierRow.id).where(ClassifierRow.id == classifier_id, ClassifierRow.tenant_id == tenant.id)
    return session.scalar(stmt) is not None


def delete_classifier(session: Session, tenant: TenantRef, classifier_id: uuid.UUID) -> None:
    deleted = session.execute(
        delete(ClassifierRow)
        .where(ClassifierRow.id == classifier_id, ClassifierRow.tenant_id == tenant.id)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not deleted:
        raise not_found("classifier", classifier_id)
    registry.classifiers.discard((tenant.id, classifier_id))
    _checked.pop((tenant.id, classifier_id), None)


def artifact_zip(session: Session, tenant: TenantRef, classifier_id: uuid.UUID) -> tuple[str, bytes]:
    """(version, a ZIP of the folder `Classifier.save` writes): what `candor predict` loads."""
    row = session.execute(
        select(ClassifierRow.version, ClassifierRow.artifact).where(
            ClassifierRow.id == classifier_id, ClassifierRow.tenant_id == tenant.id
        )
    ).one_or_none()
    if row is None:
        raise not_found("classifier", classifier_id)
    session.commit()  # the connection goes back to the pool while the ZIP is built
    version, blob = row
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="candor-artifact-") as tmp:
        folder = Classifier.from_bytes(blob).save(Path(tmp))
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.iterdir()):
                zf.write(path, path.name)
    return version, buf.getvalue()


def decode_b64(items: Sequence[str]) -> list[bytes]:
    out = []
    for i, b64 in enumerate(items):
        try:
            out.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise Problem(422, "Invalid image", f"image {i}: not valid base64") from exc
    return out


def _check_candidates(candidates: Sequence[str], classes: Sequence[str]) -> None:
    known = set(classes)
    for i, c in enumerate(candidates):
        problem = text_problem(c)
        if problem is not None:
            raise Problem(422, "Invalid request", f"candidates {i}: the name {problem}")
        if c not in known:
            raise Problem(422, "Invalid request", f"candidate {show(c)} is not among the classifier's classes")


def predict(
    session: Session,
    tenant: TenantRef,
    classifier_id: uuid.UUID,
    blobs: Sequence[bytes],
    top_k: int,
    candidates: Sequence[str] | None,
) -> PredictResponse:
    clf_id, version, clf = owned_classifier(session, tenant, classifier_id)
    settings = get_settings()
    if candidates:
        _check_candidates(candidates, clf.classes)
    # The request's pixel budget is checked from the headers before anything is decoded.
    total = 0
    for i, b in enumerate(blobs):
        total += header_pixels(b) or 0
        if total > settings.max_predict_pixels:
            raise Problem(
                413,
                "Request too large",
                f"image {i} brings the request to {total:,} pixels; one /predict request takes at most "
                f"{settings.max_predict_pixels:,} pixels in all: send fewer images per request",
            )
    images = []
    try:
        for i, b in enumerate(blobs):
            if len(b) > settings.max_image_bytes:
                raise ImageError(f"image {i}: {len(b)} bytes, over the limit of {settings.max_image_bytes}")
            images.append(decode_image(b, f"image {i}", settings.max_image_pixels))
    except ImageError as exc:
        for im in images:
            im.close()
        raise Problem(422, "Invalid image", str(exc)) from exc
    backbone = registry.get_backbone(clf.backbone)
    try:
        top = clf.predict(backbone, images, top_k=top_k, candidates=candidates or None)
    except ArtifactError as exc:
        raise Problem(422, "Invalid request", str(exc)) from exc
    return PredictResponse(
        classifier_id=clf_id,
        version=version,
        predictions=[
            Prediction(index=i, label=t[0][0], top=[Scored(label=c, p=p) for c, p in t]) for i, t in enumerate(top)
        ],
    )
