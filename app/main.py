"""The application: ``create_app()`` wires routes, dependencies, errors and the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from app import __version__, migrate
from app.auth import require_admin
from app.database import create_engine
from app.deps import provide_engine, provide_principal, provide_settings
from app.errors import EXCEPTION_HANDLERS
from app.request_id import add_request_id_header
from app.routes import admin_keys, admin_tenants, health, tenant
from app.settings import Settings, load_settings


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = create_engine(settings.database_url)
    try:
        head = migrate.head_revision()
        await migrate.ensure_at_head(engine, head)
        app.state.engine = engine
        app.state.schema_head = head
        yield
    finally:
        await engine.dispose()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    admin = Router(
        path="/admin",
        route_handlers=[*admin_tenants.ROUTES, *admin_keys.ROUTES],
        guards=[require_admin],
        tags=["admin"],
        security=[{"adminToken": []}, {"adminUser": []}],
    )
    v1 = Router(
        path="/v1",
        route_handlers=[*tenant.ROUTES],
        dependencies={"principal": Provide(provide_principal)},
        tags=["tenant"],
        security=[{"virtualKey": []}],
    )
    return Litestar(
        route_handlers=[health.healthz, health.readyz, admin, v1],
        dependencies={
            "engine": Provide(provide_engine, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[add_request_id_header],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        openapi_config=OpenAPIConfig(
            title="Earmark",
            version=__version__,
            description="Metering gateway for OpenAI-compatible speech-to-text APIs.",
            components=Components(
                security_schemes={
                    "virtualKey": SecurityScheme(
                        type="http", scheme="bearer", description="An sk-bf- virtual key"
                    ),
                    "adminToken": SecurityScheme(
                        type="http", scheme="bearer", description="EARMARK_ADMIN_TOKEN"
                    ),
                    "adminUser": SecurityScheme(
                        type="http", scheme="basic", description="An admin user"
                    ),
                }
            ),
        ),
    )
