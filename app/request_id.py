"""A gateway-generated, time-ordered id for every request, echoed as ``x-request-id`` on
every response (errors and unknown routes included) and recorded in the ledger."""

from __future__ import annotations

from litestar.types import Message, Scope

from app.ids import new_id

HEADER = "x-request-id"


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
