"""A gateway-generated, time-ordered id for every request, echoed as ``x-request-id`` on
every response (errors and unknown routes included) and recorded in the ledger."""

from __future__ import annotations

import logging

from litestar.types import Message, Scope

from app.ids import new_id

HEADER = "x-request-id"
access = logging.getLogger("earmark.access")


def request_id(scope: Scope) -> str:
    state = scope.setdefault("state", {})  # type: ignore[typeddict-item]
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = new_id("req")
    return rid


async def add_request_id_header(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((HEADER.encode(), request_id(scope).encode()))
        message["headers"] = headers


def log_access(scope: Scope, status: int, seconds: float) -> None:
    """The access log's line: method, path (never its query string, where a careless
    client may put a secret; never a header), status, milliseconds and request id."""
    access.info(
        "%s %s %d %.1fms %s",
        scope["method"],
        scope["path"].encode("unicode_escape").decode()[:200],
        status,
        seconds * 1000,
        request_id(scope),
    )
