"""``GET /metrics``: Prometheus's text format, summed over every worker process."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State

from app.ops.metrics import CONTENT_TYPE, Metrics


@get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=True)
async def metrics(state: State) -> Response[bytes]:
    registry: Metrics = state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
