"""The admin console at /console: server-rendered pages over the service functions the
admin API and the CLI use, so every action is checked and audited the same way.

``gate`` decides who may see a page (sessions in the database, CSRF on every form) and
adds the security headers; ``signin`` signs in and out; one module per area (overview,
tenants, keys, budgets, usage, reference) holds its pages; ``forms`` turns form fields
into the API's request types; templates and the vendored scripts live beside them.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router
from litestar.exceptions import HTTPException, NotFoundException
from litestar.static_files import create_static_files_router

from app.console import budgets, keys, overview, reference, signin, tenants, usage
from app.console.gate import (
    EXCEPTION_HANDLERS,
    PREFIX,
    STATIC,
    console_headers,
    gate,
    http_error,
    template_config,
)

MAX_FORM_BYTES = 64 << 10  # console forms are a few fields

__all__ = ["console_headers", "router", "template_config", "with_pages"]


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
        path=f"{PREFIX}/static",
        directories=[STATIC],
        include_in_schema=False,
        # The console's 404 page, never the file system's words (the install path), and a
        # 404 for a name the file system cannot take (a NUL byte).
        exception_handlers={HTTPException: http_error, ValueError: _not_found},
    )
    return [pages, assets]


def _not_found(request: Request, _: ValueError) -> Response:
    return http_error(request, NotFoundException())


def with_pages(handlers: dict[Any, Any]) -> dict[Any, Any]:
    """The app's exception handlers, with Litestar's own errors under /console (an
    unknown page, a wrong method) answered by the console's error page, not the API's JSON."""
    api = handlers[HTTPException]

    def either(request: Request, error: HTTPException) -> Response:
        path = request.url.path
        if path == PREFIX or path.startswith(f"{PREFIX}/"):
            return http_error(request, error)
        return api(request, error)

    return {**handlers, HTTPException: either}
