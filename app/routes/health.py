"""Liveness and readiness probes."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import exc

from app.envelope import error_response
from app.storage import migrate


@get("/healthz", tags=["ops"], summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", tags=["ops"], summary="The database answers and its schema is at head")
async def readyz(state: State) -> Response[dict[str, object]]:
    try:
        await migrate.ensure_at_head(state.engine, state.schema_head)
    except migrate.SchemaNotCurrent as error:
        return error_response(503, str(error), code="schema_not_current")
    except (exc.SQLAlchemyError, OSError) as error:
        return error_response(
            503, f"the database is unreachable: {type(error).__name__}", code="database_unavailable"
        )
    return Response({"status": "ready", "schema_revision": state.schema_head})
