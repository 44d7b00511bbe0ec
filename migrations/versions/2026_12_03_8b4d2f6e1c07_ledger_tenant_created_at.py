"""An index for a tenant's calls over a time range (the console's tenant page, usage).

Revision ID: 8b4d2f6e1c07
Revises: 5e1a9c7d3b20
Create Date: 2026-12-03 19:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "8b4d2f6e1c07"
down_revision: str | None = "5e1a9c7d3b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ledger_tenant_id_created_at", ["tenant_id", "created_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_tenant_id_created_at")
