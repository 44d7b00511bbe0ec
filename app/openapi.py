"""The API as ``/schema/openapi.json`` documents it: what each route really takes and answers.

Litestar documents a handler from its signature. What it cannot see is written here: the
audio endpoints' multipart form (read by ``gateway/form.py``, not by Litestar), the error envelope
every refusal uses (``envelope.py``) with the statuses each group of routes can answer, and
the example request and answer of each operation (``openapi_examples.py``). ``/schema``
is Swagger UI served from the ``swagger-ui-bundle-v2`` distribution (Apache-2.0), never
from a CDN, so it renders on an air-gapped host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from app import __version__
from app.gateway.admission import FORMATS
from app.openapi_examples import EXAMPLES, OperationExample

ASSETS = "/schema/assets"


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    """Every error, tenant or admin, as OpenAI's API writes it."""

    error: ErrorDetail


_WHY = {
    400: "Bad input: the message and `param` name the field",
    401: "No key, or not a valid one",
    402: "A budget on the key's path cannot cover the call (`x-should-retry: false`)",
    403: "The key may not do this (revoked, expired, model not allowed, tenant inactive)",
    404: "No such resource or model",
    408: "The request was not sent in time",
    409: "Conflicts with the current state (on an audio call: its Idempotency-Key's first "
    "call is still running; retry after `Retry-After`)",
    413: "The body or the file is over its limit (25 MiB for audio)",
    422: "The Idempotency-Key was used for a different request",
    429: "Too many requests (a rate limit, budgets busy with calls in flight, throttled "
    "sign-ins): retry after `Retry-After`",
    502: "The provider failed and no fallback answered",
    503: "The database or the gateway is unavailable: nothing was sent upstream",
    504: "The provider did not answer in time",
}


def _header(description: str, **schema: Any) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING, **schema), description=description)


_REQUEST_ID = _header("The gateway's id of this request (a call's ledger row id)")
_HEADERS_BY_STATUS = {
    "402": {"x-should-retry": _header("`false`: a retry cannot succeed (SDKs do not retry)")},
    "409": {"retry-after": _header("Seconds to wait before retrying, when the conflict ends")},
    "429": {"retry-after": _header("Seconds to wait before retrying")},
    "503": {"retry-after": _header("Seconds to wait before retrying, when known")},
    **{
        status: {
            "x-should-retry": _header(
                "`false` when the provider may have done (and billed) the work: an SDK's "
                "automatic retry would have it done twice"
            )
        }
        for status in ("502", "504")
    },
}

ADMIN_ERRORS = (400, 401, 403, 404, 409, 413, 429, 503)  # 429: sign-ins throttled
TENANT_ERRORS = (401, 403, 503)
AUDIO_ERRORS = (400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 502, 503, 504)


def error_responses(statuses: Iterable[int]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=ErrorEnvelope,
            description=_WHY[status],
            generate_examples=False,
        )
        for status in statuses
    }


@dataclass
class DocumentedOperation(Operation):
    """Any route's operation: every response names its ``x-request-id``, refusals the
    headers that say when to retry, and a JSON body and success answer their example."""

    example: ClassVar[OperationExample | None] = None  # set per handler by with_errors

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if isinstance(response, OpenAPIResponse):
                response.headers = {
                    **(response.headers or {}),
                    "x-request-id": _REQUEST_ID,
                    **_HEADERS_BY_STATUS.get(status, {}),
                }

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        # Written after Litestar's conversion, which leaves out every null (an example's too).
        if self.example and self.example.request is not None:
            schema["requestBody"]["content"]["application/json"]["example"] = self.example.request
        for status, response in schema["responses"].items():
            if self.example and status.startswith("2") and "content" in response:
                response["content"]["application/json"]["example"] = self.example.response
        return schema


def with_errors(handlers: Iterable[Any], statuses: Iterable[int]) -> list[Any]:
    """The handlers, each documenting the error envelope for ``statuses`` (a handler's own
    ``responses`` win), its headers, and its examples if ``openapi_examples`` has some."""
    statuses, handlers = tuple(statuses), list(handlers)
    for handler in handlers:
        if isinstance(handler, HTTPRouteHandler):
            handler.responses = {**error_responses(statuses), **(handler.responses or {})}
            if not issubclass(handler.operation_class, DocumentedOperation):
                handler.operation_class = DocumentedOperation
            example = EXAMPLES.get(handler.handler_name)
            # Litestar makes an operation from the class alone: a handler's examples ride on
            # a subclass of its own (made once, though every create_app() passes here).
            if example and handler.operation_class.example is not example:
                base = handler.operation_class
                handler.operation_class = type(base.__name__, (base,), {"example": example})
    return handlers


# --- The audio endpoints --------------------------------------------------------------

_STRING = Schema(type=OpenAPIType.STRING)


def _field(description: str, **schema: Any) -> Schema:
    return Schema(description=description, **{"type": OpenAPIType.STRING, **schema})


def _form(endpoint: str) -> Schema:
    fields = {
        "file": _field(
            "The audio: flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav or webm, at most 25 MiB. "
            "Its duration is measured from its bytes.",
            format="binary",
        ),
        "model": _field("A model of this gateway: `provider/model`, a bare name or an alias"),
        "prompt": _field("Text to guide the model's style, or continue a previous segment"),
        "response_format": _field(
            "The answer's format",
            enum=sorted(FORMATS[endpoint]),
            default="json",
        ),
        "temperature": Schema(
            type=OpenAPIType.NUMBER,
            minimum=0,
            maximum=1,
            description="Sampling temperature, 0 to 1",
        ),
    }
    if endpoint == "transcriptions":
        fields |= {
            "language": _field("The audio's language, ISO-639-1 (`en`)"),
            "timestamp_granularities[]": Schema(
                type=OpenAPIType.ARRAY,
                items=_field("", enum=["word", "segment"]),
                description="With `verbose_json`: `word`, `segment` or both",
            ),
            "include[]": Schema(
                type=OpenAPIType.ARRAY,
                items=_STRING,
                description="Extra information in the answer (`logprobs`)",
            ),
            "stream": Schema(
                type=OpenAPIType.BOOLEAN,
                default=False,
                description="Server-sent events as the model transcribes (gpt-4o models; "
                "whisper-1 ignores it, as OpenAI's does)",
            ),
            "chunking_strategy": _field(
                "`auto`, or a JSON object of server-side VAD settings (gpt-4o models)"
            ),
        }
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["file", "model"],
        properties=fields,
        description="Fields are forwarded to the provider as sent; others are kept too.",
    )


_ANSWER = Schema(
    type=OpenAPIType.OBJECT,
    required=["text"],
    properties={
        "text": _STRING,
        "usage": Schema(
            type=OpenAPIType.OBJECT,
            description="The provider's usage, untouched (duration seconds, or tokens)",
        ),
        "extra_fields": Schema(
            type=OpenAPIType.OBJECT,
            description="Earmark's: request_type, provider, model_requested, "
            "model_deployment, latency (ms), cache_debug when a cache applies",
        ),
    },
    description="`json`, `verbose_json` and `diarized_json` answers (the provider's "
    "fields, plus `extra_fields`)",
)


@dataclass
class AudioOperation(DocumentedOperation):
    """A transcription or translation call: its form, and the 200 in each format."""

    def __post_init__(self) -> None:
        endpoint = (
            "translations" if "Translations" in (self.operation_id or "") else "transcriptions"
        )
        self.request_body = RequestBody(
            required=True,
            content={"multipart/form-data": OpenAPIMediaType(schema=_form(endpoint))},
        )
        ok = OpenAPIResponse(
            description="The transcript, in the requested `response_format`",
            headers={
                "x-bf-cache": _header(
                    "`hit`: answered from the cache; `miss` otherwise", enum=["hit", "miss"]
                ),
                "idempotent-replayed": _header(
                    "`true`: the answer of an earlier call with this Idempotency-Key, not "
                    "billed again",
                    enum=["true"],
                ),
            },
            content={
                "application/json": OpenAPIMediaType(schema=_ANSWER),
                "text/plain": OpenAPIMediaType(
                    schema=_STRING, example="Text, or SubRip (srt) / WebVTT (vtt) captions"
                ),
                "text/event-stream": OpenAPIMediaType(
                    schema=_STRING,
                    example='data: {"type":"transcript.text.delta","delta":"Hel"}\n\n',
                ),
            },
        )
        others = {k: v for k, v in (self.responses or {}).items() if k not in ("200", "201")}
        self.responses = {"200": ok, **others}
        super().__post_init__()


def config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Earmark",
        version=__version__,
        description="Metering gateway for OpenAI-compatible speech-to-text APIs. Every "
        'error is `{"error": {message, type, param, code}}`; every answer carries '
        "`x-request-id`.",
        path="/schema",
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{ASSETS}/swagger-ui-bundle.js",
                css_url=f"{ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{ASSETS}/favicon-32x32.png'>",
            )
        ],
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
    )


def assets_router() -> Any:
    """Swagger UI's scripts and styles, from the installed distribution."""
    return create_static_files_router(
        path=ASSETS, directories=[swagger_ui_path], include_in_schema=False
    )
