"""The admin API at ``/admin``: one module per area, one router over them all.

Every handler is behind ``require_admin`` (the admin token or an admin user), is given
the ``Actor`` its changes are audited under, and takes a small, strict JSON body.
"""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from app import openapi
from app.access.auth import require_admin
from app.deps import provide_actor
from app.routes.admin import audit, budgets, calls, keys, tenants, usage, webhooks
from app.routes.params import strict_json_body

MAX_BODY_BYTES = 1 << 20  # admin requests are small JSON documents


def router() -> Router:
    return Router(
        path="/admin",
        route_handlers=openapi.with_errors(
            [
                *tenants.ROUTES,
                *keys.ROUTES,
                *budgets.ROUTES,
                *usage.ROUTES,
                *calls.ROUTES,
                *audit.ROUTES,
                *webhooks.ROUTES,
            ],
            openapi.ADMIN_ERRORS,
        ),
        guards=[require_admin],
        dependencies={"actor": Provide(provide_actor, sync_to_thread=False)},
        before_request=strict_json_body,
        request_max_body_size=MAX_BODY_BYTES,
        tags=["admin"],
        security=[{"adminToken": []}, {"adminUser": []}],
    )
