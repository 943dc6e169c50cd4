"""job annotators: per-annotator accuracy, confusion and item count estimated by a job

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_annotators",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("annotator", sa.String(length=255), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("confusion", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_annotators_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "annotator", name=op.f("pk_job_annotators")),
    )


def downgrade() -> None:
    op.drop_table("job_annotators")
