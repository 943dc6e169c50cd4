"""job results: the k-fold out-of-sample pred_probs row of each item (cross_validation.folds)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("job_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pred_probs_oos", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_results", schema=None) as batch_op:
        batch_op.drop_column("pred_probs_oos")
