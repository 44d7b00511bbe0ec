"""Usage reports for admins: ledger totals grouped by tenant, key, model, provider, day or
month over a time range, as JSON or CSV for invoicing.

Totals come from the same ledger rows that budgets settle against, so they reconcile with
the budget counters to the nano-dollar.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Date, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.billing.metering import usd
from app.errors import InvalidRequest
from app.storage import database
from app.storage.models import api_keys, ledger, tenants

GROUPS = ("tenant", "key", "model", "provider", "day", "month")
_REFUSED = ("rejected", "released")  # never went upstream: no usage, no cost
METRICS = (
    "calls",
    "refused",
    "audio_seconds",
    "input_text_tokens",
    "input_audio_tokens",
    "output_tokens",
    "cost_usd",
)


class UsageReport(msgspec.Struct, kw_only=True):
    group_by: list[str]
    start: datetime | None
    end: datetime | None
    data: list[dict[str, Any]]
    totals: dict[str, Any]


def _bucket(dialect: str, column: ColumnElement[Any], unit: str) -> ColumnElement[Any]:
    """A UTC calendar bucket, 2026-11-23 (day) or 2026-11 (month): on SQLite a prefix of the
    stored naive UTC text; on PostgreSQL a date (day, written out by ``_shape``) or text."""
    if dialect == "postgresql":
        utc = func.timezone("UTC", column)
        return cast(utc, Date) if unit == "day" else func.to_char(utc, "YYYY-MM")
    return func.substr(column, 1, 10 if unit == "day" else 7)


def parse_instant(name: str, text: str | None) -> datetime | None:
    """A bound of the range, in UTC; errors name `from` or `to`."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise InvalidRequest(
            f"`{name}` must be an RFC 3339 time with a UTC offset, e.g. 2026-11-01T00:00:00Z.",
            param=name,
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before the year 1 in UTC
        raise InvalidRequest(f"`{name}` is out of range.", param=name) from None


def parse_group_by(text: str | None) -> list[str]:
    groups = [part.strip() for part in (text or "").split(",") if part.strip()]
    unknown = [group for group in groups if group not in GROUPS]
    if unknown or len(set(groups)) != len(groups):
        raise InvalidRequest(
            f"`group_by` takes distinct values from {', '.join(GROUPS)}; got {text!r}.",
            param="group_by",
        )
    return groups


_SUMS = (
    "calls",
    "refused",
    "audio_ms",
    "input_text_tokens",
    "input_audio_tokens",
    "output_tokens",
    "cost_nanos",
)


def _metrics() -> list[Any]:
    """Each of ``_SUMS`` over the selected rows."""
    used = ~ledger.c.status.in_(_REFUSED)
    return [
        func.coalesce(func.sum(case((used, 1), else_=0)), 0).label("calls"),
        func.coalesce(func.sum(case((used, 0), else_=1)), 0).label("refused"),
        func.coalesce(func.sum(ledger.c.audio_ms), 0).label("audio_ms"),
        func.coalesce(func.sum(ledger.c.input_text_tokens), 0).label("input_text_tokens"),
        func.coalesce(func.sum(ledger.c.input_audio_tokens), 0).label("input_audio_tokens"),
        func.coalesce(func.sum(ledger.c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(ledger.c.cost_nanos), 0).label("cost_nanos"),
    ]


def _shape(row: Any, groups: list[str]) -> dict[str, Any]:
    values = {
        group: value.isoformat() if isinstance(value := getattr(row, group), date) else value
        for group in groups
    }
    return {
        **values,
        "calls": int(row.calls),
        "refused": int(row.refused),
        "audio_seconds": str(Decimal(int(row.audio_ms)).scaleb(-3)),
        "input_text_tokens": int(row.input_text_tokens),
        "input_audio_tokens": int(row.input_audio_tokens),
        "output_tokens": int(row.output_tokens),
        "cost_usd": usd(int(row.cost_nanos)),
    }


async def usage_report(
    engine: AsyncEngine,
    groups: list[str],
    start: datetime | None,
    end: datetime | None,
    *,
    tenant_id: str | None = None,
) -> UsageReport:
    if start and end and end <= start:
        raise InvalidRequest("`to` must be after `from`.", param="to")
    dialect = engine.dialect.name
    tenant, key = ledger.c.tenant_id, ledger.c.key_id
    if dialect == "sqlite":
        # Not the bare columns: SQLite would rather read the whole ledger in their index's
        # order than sort the rows of the range (`|| ''` keeps the value, loses the index).
        tenant, key = tenant.concat(""), key.concat("")
    columns = {
        "tenant": tenant,
        "key": key,
        "model": ledger.c.model,
        "provider": ledger.c.provider,
        "day": _bucket(dialect, ledger.c.created_at, "day"),
        "month": _bucket(dialect, ledger.c.created_at, "month"),
    }
    keys = [columns[group].label(group) for group in groups]
    where = []
    if start:
        where.append(ledger.c.created_at >= start)
    if end:
        where.append(ledger.c.created_at < end)
    if tenant_id:
        where.append(ledger.c.tenant_id == tenant_id)
    query = select(*keys, *_metrics()).where(*where)
    if keys:
        query = query.group_by(*keys).order_by(*keys)
    async with database.read(engine) as conn:
        rows = (await conn.execute(query)).all()
        data = [_shape(row, groups) for row in rows] if keys else []
        await _name(conn, data, groups)
    totals = _shape(_sums(rows), []) if keys else _shape(rows[0], [])
    return UsageReport(group_by=groups, start=start, end=end, data=data, totals=totals)


def _sums(rows: list[Any]) -> SimpleNamespace:
    """The report's totals: every group's metrics added up."""
    return SimpleNamespace(**{name: sum(int(getattr(row, name)) for row in rows) for name in _SUMS})


_NAMED = {"tenant": tenants, "key": api_keys}  # grouped by these, rows carry their names too


async def _name(conn: AsyncConnection, data: list[dict[str, Any]], groups: list[str]) -> None:
    """``tenant_name`` / ``key_name`` beside each id, for invoices (a deleted key's too)."""
    for group in groups:
        table = _NAMED.get(group)
        if table is None:
            continue
        ids = {row[group] for row in data if row[group] is not None}
        names = await database.names(conn, table, ids)
        for row in data:
            row[f"{group}_name"] = names.get(row[group])


async def key_totals(conn: AsyncConnection, key_id: str, start: datetime) -> dict[str, Any]:
    """One key's totals since ``start`` (what ``/v1/quota`` shows for this month)."""
    query = select(*_metrics()).where(ledger.c.key_id == key_id, ledger.c.created_at >= start)
    return _shape((await conn.execute(query)).one(), [])


def group_columns(groups: list[str]) -> list[str]:
    """A report's columns before its metrics: each group, and the name beside an id."""
    return [
        name
        for group in groups
        for name in ((group, f"{group}_name") if group in _NAMED else (group,))
    ]


def to_csv(report: UsageReport) -> str:
    out = io.StringIO()
    columns = group_columns(report.group_by)
    writer = csv.DictWriter(out, fieldnames=[*columns, *METRICS], lineterminator="\n")
    writer.writeheader()
    for row in report.data or [report.totals]:
        writer.writerow({**row, **{name: _inert(row.get(name)) for name in columns}})
    return out.getvalue()


def _inert(value: Any) -> Any:
    """A name a spreadsheet would run as a formula (``=HYPERLINK(…)``, ``+``, ``-``, ``@``)
    starts with a quote instead (OWASP's advice for CSV injection)."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return f"'{value}"
    return value
