"""A gateway-generated, time-ordered id for every request, echoed as ``x-request-id`` on
every response (errors and unknown routes included) and recorded in the ledger."""

from __future__ import annotations

import logging
import time

from litestar.types import ASGIApp, Message, Receive, Scope, Send

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


def access_log(app: ASGIApp) -> ASGIApp:
    """One line per HTTP request: method, path (never its query string, where a careless
    client may put a secret; never a header), status, milliseconds and request id."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            access.info(
                "%s %s %d %.1fms %s",
                scope["method"],
                scope["path"].encode("unicode_escape").decode()[:200],
                status,
                (time.perf_counter() - started) * 1000,
                request_id(scope),
            )

    return logged
