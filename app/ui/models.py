"""The web UI's server-side state: its signing key, when none is configured, and its sign-ins."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class UiSecret(Base):
    """The key that signs session cookies and CSRF tokens when ``CANDOR_UI_SECRET`` is empty: made
    once, by whichever process needs it first, and shared by every process on the database."""

    __tablename__ = "ui_secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UiSignin(Base):
    """One web UI sign-in, by its cookie's nonce. Signing out marks it, so a copy of the cookie is
    refused too; rows are dropped once expired."""

    __tablename__ = "ui_signins"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    signed_out_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
