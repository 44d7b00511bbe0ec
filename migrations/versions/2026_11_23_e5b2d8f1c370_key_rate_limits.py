"""Per-key rate limits: requests per minute, audio seconds per window, calls in flight.

Revision ID: e5b2d8f1c370
Revises: c41f7a2e9b06
Create Date: 2026-11-23 21:41:58.961111
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5b2d8f1c370"
down_revision: str | None = "c41f7a2e9b06"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limits", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("rate_limits")
