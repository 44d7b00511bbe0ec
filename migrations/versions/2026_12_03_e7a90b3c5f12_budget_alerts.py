"""Budget alerts: a budget's thresholds, and what each period has already announced.

Revision ID: e7a90b3c5f12
Revises: c2f4e81a9d37
Create Date: 2026-12-03 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e7a90b3c5f12"
down_revision: str | None = "c2f4e81a9d37"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thresholds", sa.JSON(), nullable=True))
    with op.batch_alter_table("budget_counters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("alerted_percent", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("exhausted_alerted", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("budget_counters", schema=None) as batch_op:
        batch_op.drop_column("exhausted_alerted")
        batch_op.drop_column("alerted_percent")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_column("thresholds")
