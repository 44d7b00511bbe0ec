"""Budgets: caps per key or tenant, per-period counters, holds and an audit trail.

Revision ID: c41f7a2e9b06
Revises: 8d2e4b7c9a13
Create Date: 2026-11-23 21:26:28.185415
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c41f7a2e9b06"
down_revision: str | None = "8d2e4b7c9a13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("tenant_id", sa.String(length=40), nullable=True),
        sa.Column("limit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_budgets_key_id_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_budgets_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
    )
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budgets_key_id"), ["key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_budgets_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "budget_counters",
        sa.Column("budget_id", sa.String(length=40), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent_nanos", sa.BigInteger(), nullable=False),
        sa.Column("held_nanos", sa.BigInteger(), nullable=False),
        sa.Column("top_up_nanos", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.id"], name=op.f("fk_budget_counters_budget_id_budgets")
        ),
        sa.PrimaryKeyConstraint("budget_id", "period_start", name=op.f("pk_budget_counters")),
    )
    op.create_table(
        "budget_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("budget_id", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.id"], name=op.f("fk_budget_events_budget_id_budgets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_events")),
    )
    with op.batch_alter_table("budget_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_budget_events_budget_id"), ["budget_id"], unique=False)

    op.create_table(
        "ledger_holds",
        sa.Column("ledger_id", sa.String(length=40), nullable=False),
        sa.Column("budget_id", sa.String(length=40), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.id"], name=op.f("fk_ledger_holds_budget_id_budgets")
        ),
        sa.ForeignKeyConstraint(
            ["ledger_id"], ["ledger.id"], name=op.f("fk_ledger_holds_ledger_id_ledger")
        ),
        sa.PrimaryKeyConstraint("ledger_id", "budget_id", name=op.f("pk_ledger_holds")),
    )
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        # Rows written before budgets existed held nothing.
        batch_op.add_column(
            sa.Column("hold_nanos", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("hold_nanos")

    op.drop_table("ledger_holds")
    with op.batch_alter_table("budget_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budget_events_budget_id"))

    op.drop_table("budget_events")
    op.drop_table("budget_counters")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_budgets_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_budgets_key_id"))

    op.drop_table("budgets")
