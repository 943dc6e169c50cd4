"""web UI: a signing key shared by every process, and sign-ins that signing out revokes

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

Cookies issued before this revision carry no sign-in row and are refused: users sign in again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ui_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_ui_secrets")),
    )
    op.create_table(
        "ui_signins",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed_out_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_ui_signins_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_ui_signins")),
    )
    op.create_index(op.f("ix_ui_signins_expires_at"), "ui_signins", ["expires_at"], unique=False)
    op.create_index(op.f("ix_ui_signins_key_id"), "ui_signins", ["key_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ui_signins_key_id"), table_name="ui_signins")
    op.drop_index(op.f("ix_ui_signins_expires_at"), table_name="ui_signins")
    op.drop_table("ui_signins")
    op.drop_table("ui_secrets")
