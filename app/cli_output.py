"""How the CLI prints what the admin service functions return: aligned fields for one
object and a table for a list by default, the admin API's JSON with ``--json``.

Notes meant for a person (a secret shown once, more pages to fetch) are the caller's to
print on stderr, so stdout holds only the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from app.billing.usage import METRICS, group_columns

# What an absent value means, where "-" would not say it.
_NONE_TEXT = {"allowed_models": "all", "expires_at": "never", "period_end": "never"}
_DATETIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def to_json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value)).decode()


def render(value: Any, columns: Sequence[str] | None = None) -> tuple[str, list[str]]:
    """``value`` for a person, and notes for them: a list (``{data, next_cursor}``) as a
    table of ``columns``, a usage report as a table with its totals, anything else as one
    field per line (a secret first)."""
    value = msgspec.to_builtins(value)
    if "group_by" in value and "totals" in value:
        return _usage(value), []
    if "data" in value and "next_cursor" in value:
        cursor = value["next_cursor"]
        more = [f"more rows: add --cursor {cursor} (or --all for every page)"] if cursor else []
        return "\n".join(_table(value["data"], columns or _scalar_fields(value["data"]))), more
    if "secret" in value:
        value = {"secret": value["secret"], **value}
        return _fields(value), ["The secret is shown only now: store it. Earmark keeps its digest."]
    return _fields(value), []


def _fields(mapping: dict[str, Any]) -> str:
    tables = {k: v for k, v in mapping.items() if v and isinstance(v, list) and _rows(v)}
    width = max(map(len, mapping))
    lines = [
        f"{name.ljust(width)}  {_cell(name, value)}"
        for name, value in mapping.items()
        if name not in tables
    ]
    for name, rows in tables.items():
        lines += ["", f"{name}:", *("  " + line for line in _table(rows, _scalar_fields(rows)))]
    return "\n".join(lines)


def _rows(items: list[Any]) -> bool:
    return all(isinstance(item, dict) for item in items)


def _scalar_fields(rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0] if rows else {}
    return [name for name, value in first.items() if not isinstance(value, dict | list)]


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    cells = [[name.upper() for name in columns]]
    cells += [[_cell(name, row.get(name)) for name in columns] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return ["  ".join(map(str.ljust, row, widths)).rstrip() for row in cells]


def _usage(report: dict[str, Any]) -> str:
    groups = group_columns(report["group_by"])
    total = {**dict.fromkeys(groups, ""), **report["totals"]}
    if groups:
        total[groups[0]] = "TOTAL"
    rows = [*report["data"], total] if groups else [report["totals"]]
    return "\n".join(_table(rows, [*groups, *METRICS]))


def _cell(name: str, value: Any) -> str:
    if value is None:
        return _NONE_TEXT.get(name, "-")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_cell(name, item) for item in value) or "none"
    if isinstance(value, dict):
        items = (f"{_cell('', k)}={_cell(k, v)}" for k, v in value.items() if v is not None)
        return ", ".join(items) or "-"
    text = str(value)
    if not text.isprintable():  # a newline or a terminal escape shown, never obeyed
        text = repr(text)[1:-1]
    match = _DATETIME.fullmatch(text)
    if match:  # to the second: a table is read, not parsed
        return match[1] + match[3]
    return text
