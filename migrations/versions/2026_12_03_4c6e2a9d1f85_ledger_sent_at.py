"""When a call's request was about to reach a provider whole: what the sweeper asks.

Revision ID: 4c6e2a9d1f85
Revises: d3a8f6b1c947
Create Date: 2026-12-03 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4c6e2a9d1f85"
down_revision: str | None = "d3a8f6b1c947"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    # Calls opened before this revision may have been sent: the sweeper charges them.
    op.execute("UPDATE ledger SET sent_at = created_at WHERE status = 'forwarded'")


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
