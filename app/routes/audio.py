"""Tenant audio API: transcriptions, translations, and the models a key may use."""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter

from app.access.auth import Principal, authenticate_tenant, presented_key
from app.gateway import idempotency
from app.gateway.call import CallRequest, Gateway, handle_call
from app.gateway.form import body_chunks
from app.openapi import AudioOperation
from app.request_id import request_id

SendRaw = Annotated[str | None, HeaderParameter(name="x-bf-send-back-raw-response")]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="idempotency-key",
        description="1-255 printable ASCII characters: a retry of this call with the same key "
        "and the same request gets its answer again, unbilled (`idempotent-replayed: true`)",
    ),
]
CacheDirective = Annotated[
    str | None,
    HeaderParameter(
        name="x-bf-cache",
        description="no-cache: do not answer from the cache; no-store: do not keep this answer",
    ),
]


@post(
    ["/audio/transcriptions", "/audio/translations"],
    status_code=200,
    # The form is read by app/gateway/form.py, which bounds it field by field (documented there).
    request_max_body_size=None,
    operation_class=AudioOperation,
    summary="Transcribe, or translate into English, audio (OpenAI-compatible), metered",
)
async def audio_call(
    request: Request,
    send_raw: SendRaw = None,
    cache_directive: CacheDirective = None,
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    # The key is checked here, before a byte of the body is read, rather than by the
    # router's guard: Litestar copies the whole route handler for every guard it runs
    # (2.4% of the gateway's CPU at 16 clients, py-spy). The gateway is read rather than
    # injected: Litestar resolves dependencies in a task group of their own, which cost
    # more than the rest of its work on this route.
    state = request.app.state
    principal = await authenticate_tenant(
        state.engine, state.settings.key_pepper, presented_key(request.headers)
    )
    call = CallRequest(
        request_id=request_id(request.scope),
        principal=principal,
        operation=request.url.path.rsplit("/", 1)[-1],  # transcriptions | translations
        body=body_chunks(request.receive),
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        send_raw=(send_raw or "").lower() == "true",
        started=time.perf_counter(),
        cache_header=cache_directive,
        idempotency_key=idempotency.checked(idempotency_key),
    )
    return await handle_call(state.gateway, call)


@get("/models", summary="The models this key may use")
async def models(
    principal: NamedDependency[Principal], gateway: NamedDependency[Gateway]
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": route.name, "object": "model", "created": 0, "owned_by": route.provider_name}
            for route in gateway.catalog.visible_to(principal.allowed_models)
        ],
    }


ROUTES = [models]  # behind the tenant guard
UPLOADS = [audio_call]  # checks its key itself
