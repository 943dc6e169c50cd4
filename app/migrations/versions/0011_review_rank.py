"""job results: each item's rank and expected benefit in the job's review queue

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

Results stored before this revision keep nulls; the review queue ranks a job's results on first
use (app/review/service.py: ensure_ranked).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_rank", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("review_benefit", sa.Float(), nullable=True))
        batch_op.create_index("ix_job_results_review_rank", ["job_id", "review_rank"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_results", schema=None) as batch_op:
        batch_op.drop_index("ix_job_results_review_rank")
        batch_op.drop_column("review_benefit")
        batch_op.drop_column("review_rank")
