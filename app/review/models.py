from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class Review(Base):
    """One reviewer's decision on one item: a class, or "none of these" (``label`` null,
    ``none_of_these`` true). Every decision is a row (the audit trail); an item's latest counts."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_dataset_item", "dataset_id", "item_seq", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    item_seq: Mapped[int] = mapped_column(BigInteger, ForeignKey("items.seq", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), default=None)
    label: Mapped[str | None] = mapped_column(String(255), default=None)
    none_of_these: Mapped[bool] = mapped_column(Boolean, default=False)
    reviewer: Mapped[str] = mapped_column(String(255))  # "<tenant>/<key prefix>"
    reviewer_key_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
