from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, new_id, utcnow


class LabelStudioConnection(Base):
    """A Label Studio project connected to a classifier as its ML backend: where Label Studio is
    and the token that reads its task images, as /setup received them; ``train`` lets annotation
    webhooks start a new job on the classifier's dataset."""

    __tablename__ = "labelstudio_connections"
    __table_args__ = (UniqueConstraint("tenant_id", "classifier_id", "project"),)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    classifier_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("classifiers.id", ondelete="CASCADE"))
    project: Mapped[str] = mapped_column(String(64))  # Label Studio's project id
    url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    token: Mapped[str | None] = mapped_column(Text, nullable=True)
    train: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
