"""The SQL schema. Alembic migrations under ``migrations/`` must match these tables exactly
(a test checks that autogenerate finds nothing to do)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text, which still sorts and
    compares correctly. Values always come back aware.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16))  # active | inactive
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(sa.ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    display_prefix: Mapped[str] = mapped_column(sa.String(16))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    # NULL: every configured model.
    allowed_models: Mapped[list[str] | None] = mapped_column(sa.JSON)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Deleted keys disappear from the admin API but keep their id for the ledger.
    deleted_at: Mapped[datetime | None]
    rotated_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class KeySecret(Base):
    """One row per secret ever issued for a key; a rotation adds one and gives the previous
    ones an end (now, or now + grace)."""

    __tablename__ = "key_secrets"

    digest: Mapped[bytes] = mapped_column(sa.LargeBinary(32), primary_key=True)
    key_id: Mapped[str] = mapped_column(sa.ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime]
    valid_until: Mapped[datetime | None]


class AdminUser(Base):
    __tablename__ = "admin_users"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


# Core handles on the tables: services write plain SQL statements against these.
tenants = Tenant.__table__
api_keys = ApiKey.__table__
key_secrets = KeySecret.__table__
admin_users = AdminUser.__table__
