"""item source and Label Studio connections: where an imported item came from (a Label Studio task
id and its control names); the Label Studio projects connected to a classifier as ML backend

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", JSON, nullable=True))
    op.create_table(
        "labelstudio_connections",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("classifier_id", sa.Uuid(), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=True),
        sa.Column("token", sa.Text(), nullable=True),
        sa.Column("train", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["classifier_id"],
            ["classifiers.id"],
            name=op.f("fk_labelstudio_connections_classifier_id_classifiers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_labelstudio_connections_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labelstudio_connections")),
        sa.UniqueConstraint("tenant_id", "classifier_id", "project", name=op.f("uq_labelstudio_connections_tenant_id")),
    )


def downgrade() -> None:
    op.drop_table("labelstudio_connections")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("source")
