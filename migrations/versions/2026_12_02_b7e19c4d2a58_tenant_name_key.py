"""Tenant names are unique whatever their case: a casefolded key beside the name.

Revision ID: b7e19c4d2a58
Revises: 70d710940ac1
Create Date: 2026-12-02 07:10:00.000000
"""

import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7e19c4d2a58"
down_revision: str | None = "70d710940ac1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_tenants = sa.table("tenants", sa.column("id", sa.String), sa.column("name", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_key", sa.String(length=600), nullable=True))
    connection = op.get_bind()
    seen: set[str] = set()
    for row in connection.execute(sa.select(_tenants.c.id, _tenants.c.name).order_by("id")):
        key = unicodedata.normalize("NFC", row.name).strip().casefold()
        if key in seen:  # names that differed only by case keep working, apart
            key = f"{key} ({row.id})"
        seen.add(key)
        connection.execute(
            sa.text("UPDATE tenants SET name_key = :key WHERE id = :id"), {"key": key, "id": row.id}
        )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.alter_column("name_key", existing_type=sa.String(length=600), nullable=False)
        batch_op.drop_constraint("uq_tenants_name", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_tenants_name_key"), ["name_key"])


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_tenants_name_key"), type_="unique")
        batch_op.create_unique_constraint("uq_tenants_name", ["name"])
        batch_op.drop_column("name_key")
