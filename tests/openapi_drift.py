"""Every status the suite sees a route answer must be in /schema/openapi.json for that
route, with the error envelope for errors: the documented API cannot drift from the real one.

Installed by ``conftest.py`` before any app is made: it records what the metrics
middleware records (method, route template, status) for every request of every app the
suite runs in-process; at the end of the session the statuses are checked against the
schema of a fresh app, and any that is not documented fails the run.
"""

from __future__ import annotations

import os
from typing import Any

from app.ops.metrics import Metrics

SEEN: set[tuple[str, str, int]] = set()
_middleware = Metrics.middleware


def _recording(self: Metrics, app: Any) -> Any:
    measured = _middleware(self, app)

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start" and scope.get("path_template"):
                SEEN.add((scope["method"].lower(), scope["path_template"], message["status"]))
            await send(message)

        await measured(scope, receive, send_status)

    return recorded


Metrics.middleware = _recording  # type: ignore[method-assign]


def undocumented() -> list[str]:
    """The (method, route, status) seen but not in the schema, or errors documented
    without the envelope."""
    from app.main import create_app
    from app.settings import Settings

    os.environ.setdefault("EARMARK_ADMIN_TOKEN", "x" * 32)
    spec = create_app(Settings(admin_token="x" * 32)).openapi_schema.to_schema()
    missing = []
    for method, path, status in sorted(SEEN):
        operation = spec["paths"].get(path, {}).get(method)
        if operation is None:
            continue  # not in the schema at all (the schema's own routes, static assets)
        response = operation["responses"].get(str(status))
        if response is None:
            missing.append(f"{method.upper()} {path} answered {status}, not documented")
        elif status >= 400:
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref") != "#/components/schemas/ErrorEnvelope":
                missing.append(f"{method.upper()} {path} {status} is not the error envelope")
    return missing
