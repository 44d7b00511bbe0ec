"""Ledger: one row per metered call.

Revision ID: 8d2e4b7c9a13
Revises: 5a0c31e2d7b4
Create Date: 2026-11-23 21:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8d2e4b7c9a13"
down_revision: str | None = "5a0c31e2d7b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("model_requested", sa.String(length=200), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("response_format", sa.String(length=20), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("upload_bytes", sa.BigInteger(), nullable=True),
        sa.Column("probed_audio_ms", sa.Integer(), nullable=True),
        sa.Column("audio_ms", sa.Integer(), nullable=True),
        sa.Column("input_text_tokens", sa.Integer(), nullable=True),
        sa.Column("input_audio_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.Column("usage_source", sa.String(length=16), nullable=True),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("upstream_latency_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("completed_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_ledger_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_ledger_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
    )
    op.create_index("ix_ledger_created_at", "ledger", ["created_at"])
    op.create_index("ix_ledger_key_id_id", "ledger", ["key_id", "id"])
    op.create_index("ix_ledger_tenant_id_id", "ledger", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_tenant_id_id", table_name="ledger")
    op.drop_index("ix_ledger_key_id_id", table_name="ledger")
    op.drop_index("ix_ledger_created_at", table_name="ledger")
    op.drop_table("ledger")
