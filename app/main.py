"""The application: ``create_app()`` wires routes, dependencies, errors and the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.logging.config import LoggingConfig

from app import console, openapi
from app.access.admin_users import PasswordChecker
from app.access.auth import require_tenant
from app.access.throttle import SignInThrottle
from app.audio.sandbox import Sandbox
from app.catalog import Catalog
from app.config import load_config, provider_api_keys
from app.deps import (
    provide_engine,
    provide_gateway,
    provide_principal,
    provide_settings,
)
from app.envelope import EXCEPTION_HANDLERS
from app.gateway.call import Gateway
from app.ops.journal import Journal
from app.ops.metrics import Metrics
from app.ops.sweeper import replay_journal, run_sweeper
from app.ops.webhook_delivery import delivering
from app.providers import build_providers
from app.providers.remote import create_client
from app.request_id import add_request_id_header
from app.routes import (
    admin,
    audio,
    health,
    metrics,
    tenant,
)
from app.runtime.executors import Executors
from app.settings import Settings, load_settings
from app.storage import migrate
from app.storage.database import create_engine


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    config = load_config(settings.config_path)
    catalog, provider_keys = Catalog(config), provider_api_keys(config)
    engine = create_engine(settings.database_url)
    http = create_client()
    executors = Executors.create(
        probe=settings.probe_threads,
        passwords=settings.password_threads,
        files=settings.file_threads,
    )
    providers = build_providers(config, provider_keys, http, executors.files)
    sandbox = Sandbox(settings.probe_memory_mb << 20)
    try:
        head = migrate.head_revision()
        await migrate.ensure_at_head(engine, head)
        app.state.engine = engine
        app.state.executors = executors
        app.state.admin_passwords = PasswordChecker(executors.passwords)
        app.state.sign_in_throttle = SignInThrottle()
        app.state.schema_head = head
        app.state.metrics.start_series(catalog.routes.values())
        gateway = app.state.gateway = Gateway(
            engine=engine,
            catalog=catalog,
            providers=providers,
            metrics=app.state.metrics,
            executors=executors,
            sandbox=sandbox,
            journal=Journal(Path(settings.journal_dir), executors.files),
            idempotency_retention=timedelta(hours=settings.idempotency_hours),
        )
        await replay_journal(gateway)  # what an earlier run kept while the database was away
        sweeper = asyncio.create_task(run_sweeper(gateway, settings.sweeping))
        try:
            async with delivering(engine, settings.webhooks, app.state.metrics):
                yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
    finally:
        for provider in providers.values():
            await provider.close()
        executors.close()
        sandbox.close()
        await http.close()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()
    app_metrics = Metrics(
        tenant_label=settings.metrics_tenant_label, access_log=settings.access_log
    )
    v1 = Router(
        path="/v1",
        route_handlers=[
            *openapi.with_errors(tenant.ROUTES, openapi.TENANT_ERRORS),
            *openapi.with_errors(audio.ROUTES, openapi.AUDIO_ERRORS),
        ],
        guards=[require_tenant],
        dependencies={
            "principal": Provide(provide_principal, sync_to_thread=False),
            "gateway": Provide(provide_gateway, sync_to_thread=False),
        },
        tags=["tenant"],
        security=[{"virtualKey": []}],
    )
    uploads = Router(
        path="/v1",
        route_handlers=openapi.with_errors(audio.UPLOADS, openapi.AUDIO_ERRORS),
        tags=["tenant"],
        security=[{"virtualKey": []}],
    )
    app = Litestar(
        route_handlers=[
            *openapi.with_errors([health.healthz, metrics.metrics], ()),
            *openapi.with_errors([health.readyz], (503,)),
            admin.router(),
            v1,
            uploads,
            openapi.assets_router(),
            *console.router(),
        ],
        dependencies={
            "engine": Provide(provide_engine, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        exception_handlers=console.with_pages(EXCEPTION_HANDLERS),
        middleware=[app_metrics.middleware],
        before_send=[add_request_id_header, console.console_headers],
        lifespan=[lifespan],
        # Earmark's own logger reports what matters; a client library's chatter does not.
        logging_config=LoggingConfig(
            loggers={
                "litestar": {"level": "INFO", "handlers": ["queue_listener"], "propagate": False},
                "aiohttp": {"level": "WARNING"},
                "earmark": {"level": "INFO"},
            },
        ),
        state=State({"settings": settings, "metrics": app_metrics}),
        openapi_config=openapi.config(),
        template_config=console.template_config(),
    )
    app.asgi_handler = audio.lean_uploads(app.asgi_handler, app_metrics)
    return app
