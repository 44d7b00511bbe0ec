"""The admin console at /console: server-rendered pages over the service functions the
admin API and the CLI use, so every action is checked and audited the same way.

``gate`` decides who may see a page (sessions in the database, CSRF on every form) and
adds the security headers; ``signin`` signs in and out; one module per area (overview,
tenants, keys, budgets, usage, reference) holds its pages; ``forms`` turns form fields
into the API's request types; templates and the vendored scripts live beside them.
"""

from __future__ import annotations

from litestar import Router
from litestar.static_files import create_static_files_router

from app.console import budgets, keys, overview, reference, signin, tenants, usage
from app.console.gate import EXCEPTION_HANDLERS, PREFIX, STATIC, console_headers, gate

MAX_FORM_BYTES = 64 << 10  # console forms are a few fields

__all__ = ["console_headers", "router"]


def router() -> list[Router]:
    pages = Router(
        path=PREFIX,
        route_handlers=[
            *signin.ROUTES,
            *overview.ROUTES,
            *tenants.ROUTES,
            *keys.ROUTES,
            *budgets.ROUTES,
            *usage.ROUTES,
            *reference.ROUTES,
        ],
        before_request=gate,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=MAX_FORM_BYTES,
        include_in_schema=False,
    )
    assets = create_static_files_router(
        path=f"{PREFIX}/static", directories=[STATIC], include_in_schema=False
    )
    return [pages, assets]
