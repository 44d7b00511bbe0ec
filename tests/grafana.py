"""Earmark's Grafana dashboards as Grafana would run them: panels, variables and macros.

Grafana interpolates dashboard variables in the browser (a multi-value variable in SQL
becomes a list of quoted literals; in PromQL, a regex alternation or the variable's
``allValue``), then the datasource's backend expands its macros. ``sql_macros`` follows
Grafana's PostgreSQL macro engine (pkg/tsdb/grafana-postgresql-datasource/macros.go).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

GRAFANA = Path(__file__).parent.parent / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
POSTGRES_UID = "earmark-postgres"
PROMETHEUS_UID = "earmark-prometheus"

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / f"earmark-{name}.json").read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield from panel.get("panels", [])  # collapsed rows hold their panels
        if panel["type"] != "row":
            yield panel


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` by the given, already formatted, values; Grafana's
    own ``$__…`` macros are left for the datasource."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.startswith("__") and name not in values:
            return match.group(0)
        if name not in values:
            raise KeyError(f"dashboard refers to an undefined variable ${name}")
        return values[name]

    return _VARIABLE.sub(replace, text)


def sql_list(values: list[str]) -> str:
    """A multi-value variable in a SQL query: Grafana quotes each value."""
    return ",".join("'" + value.replace("'", "''") + "'" for value in values)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _go_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def sql_macros(sql: str, start: datetime, end: datetime) -> str:
    """Expand Grafana's PostgreSQL macros for the UTC range [start, end]."""

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        args = [arg.strip() for arg in match.group(2).split(",")]
        if name == "__time":
            return f'{args[0]} AS "time"'
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
        if name == "__timeFrom":
            return f"'{_rfc3339(start)}'"
        if name == "__timeTo":
            return f"'{_rfc3339(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            interval = _INTERVAL.match(args[1].strip("'"))
            if interval is None:
                raise ValueError(f"Grafana cannot parse the interval {args[1]!r}")
            step = _go_number(int(interval.group(1)) * _SECONDS[interval.group(2)])
            group = f"floor(extract(epoch from {args[0]})/{step})*{step}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise ValueError(f"unknown Grafana macro ${name}")

    return _MACRO.sub(expand, sql)
