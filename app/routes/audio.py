"""Tenant audio API: transcriptions, translations, and the models a key may use."""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter
from litestar.types import ASGIApp, Receive, Scope, Send

from app.access.auth import Principal, authenticate_tenant, presented_key
from app.envelope import response_for
from app.gateway import idempotency
from app.gateway.call import CallRequest, Gateway, handle_call
from app.gateway.form import body_chunks
from app.openapi import AudioOperation
from app.ops.metrics import Metrics
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


UPLOAD_PATHS = frozenset(("/v1/audio/transcriptions", "/v1/audio/translations"))


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
    """What the OpenAPI document shows and what a path ``lean_uploads`` leaves to the
    router gets (``/v1/audio/transcriptions/``, say); the headers are read by ``answer``."""
    return await answer(request)


async def answer(request: Request) -> Response[Any]:
    """One upload: the key checked before a byte of the body is read, then the call."""
    state, headers = request.app.state, request.headers
    principal = await authenticate_tenant(
        state.engine, state.settings.key_pepper, presented_key(headers)
    )
    # transcriptions | translations, as OpenAI names them in the URL
    operation = request.scope["path"].rstrip("/").rsplit("/", 1)[-1]
    call = CallRequest(
        request_id=request_id(request.scope),
        principal=principal,
        operation=operation,
        body=body_chunks(request.receive),
        content_type=headers.get("content-type"),
        content_length=headers.get("content-length"),
        send_raw=headers.get("x-bf-send-back-raw-response", "").lower() == "true",
        started=time.perf_counter(),
        cache_header=headers.get("x-bf-cache"),
        idempotency_key=idempotency.checked(headers.get("idempotency-key")),
    )
    return await handle_call(state.gateway, call)


def lean_uploads(routed: ASGIApp, metrics: Metrics) -> ASGIApp:
    """The app's ASGI handler, with uploads answered below Litestar's routing: its router,
    layered middleware, signature model, guards and exception middleware cost about a
    tenth of the gateway's CPU on a call (py-spy at 16 clients), and an upload needs none
    of them. What it does need is kept: the same metrics and access log
    (``Metrics.middleware``), the same error envelopes (``envelope.response_for``) and
    Litestar's ``before_send`` hooks, which wrap this handler. Middleware or app-level
    settings added later (CORS, allowed hosts, compression) do not see these two paths
    unless they are added here too."""

    async def upload(scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        try:
            answered = (await answer(request)).to_asgi_response(None, request)
        except Exception as error:
            answered = response_for(request, error).to_asgi_response(None, request)
        await answered(scope, receive, send)

    measured = metrics.middleware(upload)

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in UPLOAD_PATHS:
            scope["path_template"] = scope["path"]  # the metrics' route label, as routed
            await measured(scope, receive, send)
            return
        await routed(scope, receive, send)

    return handler


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
UPLOADS = [audio_call]  # checks its key itself (``answer``)
