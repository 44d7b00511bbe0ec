"""PostgreSQL: earmark_no_room(), which ends a call's one-statement opening when a budget
has no room, so nothing it did stays (no transaction round trips around it).

Revision ID: 9f3b7c2e5a10
Revises: 4c6e2a9d1f85
Create Date: 2026-12-03 13:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "9f3b7c2e5a10"
down_revision: str | None = "4c6e2a9d1f85"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The SQLSTATE app.billing.ledger recognises; a class of its own, so no other error is mistaken
# for a budget's refusal.
NO_ROOM = "EM001"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION earmark_no_room() RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            RAISE EXCEPTION 'a budget on the path has no room' USING ERRCODE = '{NO_ROOM}';
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS earmark_no_room()")
