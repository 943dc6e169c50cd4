"""query indexes: keyset pages of items, tenant lists newest first, idempotency age; job_results.item_seq BIGINT

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

The composite indexes replace the single-column ones they start with (an index on (a, b) serves
every query an index on (a) serves, the foreign-key cascades included).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> (index replaced, new index, its columns)
TENANT_LISTS = {
    "datasets": ("ix_datasets_tenant_id", "ix_datasets_tenant_created", ["tenant_id", "created_at", "id"]),
    "jobs": ("ix_jobs_tenant_id", "ix_jobs_tenant_created", ["tenant_id", "created_at", "id"]),
    "classifiers": ("ix_classifiers_tenant_id", "ix_classifiers_tenant_created", ["tenant_id", "created_at", "id"]),
}


def upgrade() -> None:
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_dataset_id")
        batch_op.create_index("ix_items_dataset_seq", ["dataset_id", "seq"], unique=False)
    for table, (old, new, columns) in TENANT_LISTS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(old)
            batch_op.create_index(new, columns, unique=False)
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_created_at", ["created_at"], unique=False)
    with op.batch_alter_table("job_results", schema=None) as batch_op:
        batch_op.alter_column("item_seq", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("job_results", schema=None) as batch_op:
        batch_op.alter_column("item_seq", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_created_at")
    for table, (old, new, _) in TENANT_LISTS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(new)
            batch_op.create_index(old, ["tenant_id"], unique=False)
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_index("ix_items_dataset_seq")
        batch_op.create_index("ix_items_dataset_id", ["dataset_id"], unique=False)
