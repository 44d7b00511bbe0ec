"""The exact-match transcription cache, and a per-key switch to bypass it.

Revision ID: 70d710940ac1
Revises: e5b2d8f1c370
Create Date: 2026-11-24 01:21:03.068265
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "70d710940ac1"
down_revision: str | None = "e5b2d8f1c370"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transcription_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_transcription_cache")),
    )
    with op.batch_alter_table("transcription_cache", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transcription_cache_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            "ix_transcription_cache_route_created_at", ["route", "created_at"], unique=False
        )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cache", sa.Boolean(), server_default=sa.true(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("cache")
    with op.batch_alter_table("transcription_cache", schema=None) as batch_op:
        batch_op.drop_index("ix_transcription_cache_route_created_at")
        batch_op.drop_index(batch_op.f("ix_transcription_cache_expires_at"))
    op.drop_table("transcription_cache")
