from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, JSONType, new_id, utcnow


class ClassifierRow(Base):
    __tablename__ = "classifiers"
    __table_args__ = (Index("ix_classifiers_tenant_created", "tenant_id", "created_at", "id"),)  # newest-first pages
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(32))
    backbone: Mapped[str] = mapped_column(String(255))
    backbone_id: Mapped[str] = mapped_column(String(255))
    classes: Mapped[list] = mapped_column(JSONType)
    metrics: Mapped[dict] = mapped_column(JSONType)
    artifact: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
