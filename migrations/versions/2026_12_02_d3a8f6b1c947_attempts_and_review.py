"""Every upstream attempt recorded; calls charged for review; bounded ledger queries.

Revision ID: d3a8f6b1c947
Revises: b7e19c4d2a58
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d3a8f6b1c947"
down_revision: str | None = "b7e19c4d2a58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("status IN ('reserved', 'forwarded')")


def upgrade() -> None:
    op.create_table(
        "upstream_attempts",
        sa.Column("call_id", sa.String(length=40), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=32), nullable=True),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("charged_nanos", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["ledger.id"], name=op.f("fk_upstream_attempts_call_id_ledger")
        ),
        sa.PrimaryKeyConstraint("call_id", "n", name=op.f("pk_upstream_attempts")),
    )
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expected_nanos", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("review", sa.String(length=16), nullable=True))
    # Rows written before this revision held their maximum: the best expectation there is.
    op.execute("UPDATE ledger SET expected_nanos = hold_nanos")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_key_id_created_at", ["key_id", "created_at"])
        batch_op.create_index(
            "ix_ledger_open",
            ["key_id", "created_at"],
            sqlite_where=_OPEN,
            postgresql_where=_OPEN,
        )
        batch_op.create_index(
            "ix_ledger_open_created_at",
            ["created_at"],
            sqlite_where=_OPEN,
            postgresql_where=_OPEN,
        )
        batch_op.create_index(
            "ix_ledger_review",
            ["id"],
            sqlite_where=sa.text("review IS NOT NULL"),
            postgresql_where=sa.text("review IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_review")
        batch_op.drop_index("ix_ledger_open_created_at")
        batch_op.drop_index("ix_ledger_open")
        batch_op.drop_index("ix_ledger_key_id_created_at")
        batch_op.drop_column("review")
        batch_op.drop_column("expected_nanos")
    op.drop_table("upstream_attempts")
