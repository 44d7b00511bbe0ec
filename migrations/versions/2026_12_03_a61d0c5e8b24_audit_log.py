"""An audit trail of every admin change; the budget events it replaces move into it.

Revision ID: a61d0c5e8b24
Revises: 9f3b7c2e5a10
Create Date: 2026-12-03 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a61d0c5e8b24"
down_revision: str | None = "9f3b7c2e5a10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target_type", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=40), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    for name, columns in (
        ("ix_audit_log_target_id_id", ["target_id", "id"]),
        ("ix_audit_log_actor_id", ["actor", "id"]),
        ("ix_audit_log_action_id", ["action", "id"]),
    ):
        op.create_index(name, "audit_log", columns)
    # Same ULIDs (so the same order), the audit prefix; an admin user's name as the
    # audit trail names users.
    op.execute(
        "INSERT INTO audit_log (id, created_at, actor, action, target_type, target_id, details) "
        "SELECT 'aud_' || substr(id, 5), created_at, "
        "CASE WHEN actor = 'token' OR actor = 'cli' OR actor LIKE 'cli:%' THEN actor "
        "ELSE 'user:' || actor END, "
        "'budget.' || action, 'budget', budget_id, details FROM budget_events"
    )
    op.drop_table("budget_events")


def downgrade() -> None:
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
    op.create_index(op.f("ix_budget_events_budget_id"), "budget_events", ["budget_id"])
    op.execute(
        "INSERT INTO budget_events (id, budget_id, action, actor, details, created_at) "
        "SELECT 'evt_' || substr(id, 5), target_id, substr(action, 8), "
        "CASE WHEN actor LIKE 'user:%' THEN substr(actor, 6) ELSE actor END, "
        "coalesce(details, '{}'), created_at FROM audit_log WHERE target_type = 'budget'"
    )
    op.drop_table("audit_log")
