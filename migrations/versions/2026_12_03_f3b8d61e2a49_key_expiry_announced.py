"""Whether key.expired was sent for a key's current expiry.

Revision ID: f3b8d61e2a49
Revises: e7a90b3c5f12
Create Date: 2026-12-03 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f3b8d61e2a49"
down_revision: str | None = "e7a90b3c5f12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expiry_announced", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # Keys already expired are not announced late.
    op.execute(
        "UPDATE api_keys SET expiry_announced = TRUE "
        "WHERE expires_at IS NOT NULL AND expires_at <= CURRENT_TIMESTAMP"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("expiry_announced")
