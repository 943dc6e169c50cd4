"""Database access for datasets, items and images. Every read is scoped to a tenant here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Row, and_, delete, exists, func, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core import jsonsql, pagination
from app.datasets.models import Dataset, ImageBlob, Item
from app.jobs.models import FeatureRow


def get_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))


def list_datasets(session: Session, tenant_id: uuid.UUID, cursor: str | None, limit: int) -> Sequence[Row]:
    """A page of the tenant's datasets, newest first: (id, name, class_count, created_at); the class
    lists themselves stay in the database."""
    stmt = select(
        Dataset.id,
        Dataset.name,
        jsonsql.array_length(session, Dataset.classes).label("class_count"),
        Dataset.created_at,
    ).where(Dataset.tenant_id == tenant_id)
    return session.execute(pagination.newest_first(stmt, Dataset.created_at, Dataset.id, cursor, limit)).all()


def items_by_external_id(session: Session, dataset_id: uuid.UUID, ids: Sequence[str]) -> dict[str, Item]:
    out: dict[str, Item] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for item in session.scalars(select(Item).where(Item.dataset_id == dataset_id, Item.external_id.in_(chunk))):
            out[item.external_id] = item
    return out


def existing_images(session: Session, tenant_id: uuid.UUID, hashes: Sequence[str]) -> set[str]:
    """The hashes the tenant already stores, each row key-share locked until the transaction ends
    (in hash order): a dataset deletion cannot remove an image this upload is about to reuse."""
    found: set[str] = set()
    hashes = sorted(hashes)
    for start in range(0, len(hashes), 1000):
        chunk = hashes[start : start + 1000]
        stmt = select(ImageBlob.sha256).where(ImageBlob.tenant_id == tenant_id, ImageBlob.sha256.in_(chunk))
        found.update(session.scalars(stmt.order_by(ImageBlob.sha256).with_for_update(read=True, key_share=True)))
    return found


def insert_images(session: Session, rows: list[dict]) -> None:
    """Insert image rows, skipping hashes another request stored meanwhile."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(ImageBlob).values(rows).on_conflict_do_nothing())


def count_items(session: Session, dataset_id: uuid.UUID) -> int:
    return session.scalar(select(func.count()).select_from(Item).where(Item.dataset_id == dataset_id)) or 0


def candidate_stats(session: Session, dataset_id: uuid.UUID) -> tuple[int, int, dict[str, int]]:
    """(items, candidates over all items, how many candidate sets hold each class), computed by the
    database: two aggregate queries whatever the dataset's size."""
    length = jsonsql.array_length(session, Item.candidates)
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(length), 0)).where(Item.dataset_id == dataset_id)
    ).one()
    cand = jsonsql.array_elements(session, Item.candidates, "cand")
    hist = session.execute(
        select(cand.c.value, func.count())
        .select_from(Item)
        .join(cand, true())
        .where(Item.dataset_id == dataset_id)
        .group_by(cand.c.value)
    ).all()
    return int(count), int(total), {str(c): int(n) for c, n in hist}


def page_items(session: Session, dataset_id: uuid.UUID, after_seq: int, limit: int) -> Sequence[Item]:
    stmt = select(Item).where(Item.dataset_id == dataset_id, Item.seq > after_seq).order_by(Item.seq).limit(limit + 1)
    return session.scalars(stmt).all()


def dataset_items(session: Session, dataset_id: uuid.UUID, seq_max: int | None = None) -> Sequence[Item]:
    """The dataset's items in upload order; with ``seq_max``, only those a job was created with."""
    stmt = select(Item).where(Item.dataset_id == dataset_id)
    if seq_max is not None:
        stmt = stmt.where(Item.seq <= seq_max)
    return session.scalars(stmt.order_by(Item.seq)).all()


def max_item_seq(session: Session, dataset_id: uuid.UUID) -> int:
    return session.scalar(select(func.max(Item.seq)).where(Item.dataset_id == dataset_id)) or 0


def image_bytes(session: Session, tenant_id: uuid.UUID, hashes: Sequence[str]) -> dict[str, bytes]:
    rows = session.execute(
        select(ImageBlob.sha256, ImageBlob.data).where(ImageBlob.tenant_id == tenant_id, ImageBlob.sha256.in_(hashes))
    )
    return {h: d for h, d in rows}


def lock_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID, *, shared: bool) -> Dataset | None:
    """The tenant's dataset, its row locked until the transaction ends (PostgreSQL; SQLite has one
    writer at a time anyway): shared by a job being created on it, exclusive by its deletion, so a
    job is never created on a dataset being deleted nor a dataset deleted under a new job."""
    stmt = select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    return session.scalar(stmt.with_for_update(key_share=True, read=True) if shared else stmt.with_for_update())


def delete_dataset(session: Session, tenant_id: uuid.UUID, dataset_id: uuid.UUID) -> None:
    """Delete a dataset with its items, jobs, results and classifiers (by cascade), and the images
    and image features that no other item of the tenant refers to."""
    orphan = and_(
        exists().where(Item.dataset_id == dataset_id, Item.image_sha256 == ImageBlob.sha256),
        ~exists()
        .where(Item.image_sha256 == ImageBlob.sha256, Item.dataset_id != dataset_id)
        .where(Item.dataset_id.in_(select(Dataset.id).where(Dataset.tenant_id == tenant_id))),
    )
    orphans = select(ImageBlob.sha256).where(ImageBlob.tenant_id == tenant_id, orphan)
    # Lock the would-be orphans first (waiting for uploads that are reusing them: existing_images),
    # then delete in new statements, which see what those uploads committed meanwhile (PostgreSQL's
    # read committed takes a snapshot per statement): an image another dataset now refers to stays.
    session.execute(orphans.order_by(ImageBlob.sha256).with_for_update()).all()
    session.execute(
        delete(FeatureRow)
        .where(FeatureRow.tenant_id == tenant_id, FeatureRow.sha256.in_(orphans))
        .execution_options(synchronize_session=False)
    )
    session.execute(
        delete(ImageBlob).where(ImageBlob.tenant_id == tenant_id, orphan).execution_options(synchronize_session=False)
    )
    session.execute(
        delete(Dataset)
        .where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
        .execution_options(synchronize_session=False)
    )
