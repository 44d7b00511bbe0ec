"""Answers as OpenAI clients expect them: JSON with Bifrost's ``extra_fields``, text as
text, a provider's refusal in the OpenAI error envelope naming the provider, and a call
that got no answer told honestly whether the provider may have done (and billed) it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response

from app.billing.metering import NO_USAGE, Usage, usage_from_body, usd
from app.catalog import ModelRoute
from app.errors import EarmarkError
from app.gateway import cache
from app.gateway.forwarding import Forwarded, upstream_format
from app.gateway.streaming import replay_stream
from app.providers import AttemptFailed, UpstreamResponse

if TYPE_CHECKING:
    from app.gateway.admission import Admitted
    from app.gateway.call import CallRequest

REQUEST_TYPES = {"transcriptions": "transcription", "translations": "translation"}
TEXT_PLAIN = "text/plain"  # Litestar adds the charset (see ok)
_CHARSET = re.compile(r";\s*charset=[^;]*", re.IGNORECASE)


class UpstreamError(EarmarkError):
    """The provider gave no usable answer: 502."""

    status_code = 502
    error_type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504


def ok(body: bytes, media_type: str, headers: dict[str, str]) -> Response[bytes]:
    if media_type.startswith("text/"):  # Litestar appends "; charset=utf-8" itself
        media_type = _CHARSET.sub("", media_type)
    return Response(body, status_code=200, media_type=media_type, headers=headers)


def extra_fields(
    call: CallRequest, admitted: Admitted, route: ModelRoute, raw: Any = None
) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "request_type": REQUEST_TYPES[call.operation],
        "provider": route.provider_name,
        "model_requested": admitted.options.model,
        "model_deployment": route.upstream_model,
        "latency": int((time.perf_counter() - call.started) * 1000),
        "chunk_index": 0,
    }
    if sends_raw(call, route):
        extra["raw_request"] = {
            name: values if len(values) > 1 else values[0]
            for name, values in admitted.fields.items()
        }
        extra["raw_response"] = raw
    return extra


def sends_raw(call: CallRequest, route: ModelRoute) -> bool:
    return call.send_raw and route.provider.allow_raw_response


@dataclass(frozen=True, slots=True)
class Shaped:
    """An answer ready to send, the usage it reports, and what the cache may keep."""

    response: Response[Any]
    reported: Usage
    content_type: str
    kept: bytes  # the answer as a later identical call gets it


def answer(
    call: CallRequest,
    admitted: Admitted,
    route: ModelRoute,
    upstream: UpstreamResponse,
    cached: bool,
) -> Shaped:
    """A whole 2xx answer shaped for the caller; ``AttemptFailed`` if it is not the JSON it
    claims to be (the provider answered, so it billed: an uncertain attempt)."""
    headers = {cache.HEADER: "miss"}  # on every answer, whether or not the model caches
    content_type, body = upstream.content_type, upstream.body
    if not content_type.startswith("application/json"):
        media_type = content_type or TEXT_PLAIN
        return Shaped(ok(body, media_type, headers), NO_USAGE, media_type, body)
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise AttemptFailed(
            f"{route.provider_name} sent a malformed JSON answer", kind="malformed", reached=True
        ) from None
    reported = usage_from_body(decoded)
    options = admitted.options
    if upstream_format(route, options.response_format, options.stream) != options.response_format:
        text = decoded.get("text", "") if isinstance(decoded, dict) else ""
        rendered = f"{text}\n".encode()
        return Shaped(ok(rendered, TEXT_PLAIN, headers), reported, TEXT_PLAIN, rendered)
    if isinstance(decoded, dict):
        raw = msgspec.json.decode(body) if sends_raw(call, route) else None  # untouched
        decoded["extra_fields"] = extra_fields(call, admitted, route, raw)
        if cached:
            decoded["extra_fields"]["cache_debug"] = {"cache_hit": False}
    shaped = ok(msgspec.json.encode(decoded), "application/json", headers)
    return Shaped(shaped, reported, "application/json", body)


def replay(call: CallRequest, admitted: Admitted, entry: cache.Entry) -> Response[Any]:
    """A cached answer, as the call would have had it from the provider."""
    route = admitted.route
    headers = {cache.HEADER: "hit"}
    if not entry.content_type.startswith("application/json"):
        return ok(entry.body, entry.content_type, headers)
    decoded = msgspec.json.decode(entry.body)
    if admitted.options.stream:
        return replay_stream(decoded, headers)
    debug = {
        "cache_hit": True,
        "cache_id": entry.key,
        "hit_type": "direct",
        "requested_provider": route.provider_name,
        "requested_model": route.model,
    }
    decoded["extra_fields"] = {**extra_fields(call, admitted, route), "cache_debug": debug}
    return ok(msgspec.json.encode(decoded), "application/json", headers)


def refusal(
    route: ModelRoute, upstream: UpstreamResponse, charged: int
) -> tuple[Response[Any], int, str | None]:
    """The provider's own error, relayed: 502 for its 5xx; its status otherwise. If an
    earlier attempt may have been billed (``charged``), the message says so."""
    status = 502 if upstream.status >= 500 else upstream.status
    envelope = upstream_error_body(route.provider_name, upstream.status, upstream.body)
    if charged:
        envelope["error"]["message"] += (
            f" An earlier attempt may have been billed by its provider, so this call was "
            f"charged its expected cost (${usd(charged)}) pending review."
        )
    headers = {} if status in (429, 502) else {"x-should-retry": "false"}
    return (
        Response(envelope, status_code=status, headers=headers),
        status,
        envelope["error"]["code"],
    )


def no_answer(forwarded: Forwarded, charged: int) -> UpstreamError:
    """Every attempt failed. The message says what the tenant needs to know before it
    retries: whether a provider may have done the work, and what it was charged."""
    failure = forwarded.failure
    assert failure is not None
    if charged:
        outcome = (
            f" The provider may have done the work, so this call was charged its expected "
            f"cost (${usd(charged)}) pending review; a retry may be billed again."
        )
    else:
        outcome = " No provider can have billed it: nothing was charged."
    # An SDK retries a 5xx on its own: never when that may bill the work twice.
    headers = {"x-should-retry": "false"} if charged else None
    error = UpstreamTimeout if failure.kind == "timeout" else UpstreamError
    return error(failure.message + "." + outcome, code=failure_code(failure), headers=headers)


def failure_code(failure: AttemptFailed) -> str:
    """The error code a call whose last attempt failed this way ends with."""
    return {"timeout": "upstream_timeout", "malformed": "upstream_malformed"}.get(
        failure.kind, "upstream_unreachable"
    )


def upstream_error_body(provider: str, status: int, body: bytes) -> dict[str, Any]:
    """The provider's error as an OpenAI envelope whose message names the provider."""
    try:
        error = msgspec.json.decode(body).get("error")
    except (msgspec.DecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return {
            "error": {
                "message": f"{provider}: {error['message']}",
                "type": error.get("type") or "upstream_error",
                "param": error.get("param"),
                "code": error.get("code"),
            }
        }
    text = body[:200].decode("utf-8", "replace").strip()
    return {
        "error": {
            "message": f"{provider} returned HTTP {status}" + (f": {text}" if text else ""),
            "type": "upstream_error",
            "param": None,
            "code": None,
        }
    }
