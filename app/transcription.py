"""One metered audio call: from the request body to the settled ledger row.

refuse a used-up key → read the form → resolve the model → measure the audio → open the
ledger row → forward (with fallbacks) → shape the answer as OpenAI would → settle the row
with usage and cost. The ledger row of a non-streamed call is settled before the answer
is sent, so an answered call is always in the ledger.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import msgspec
from litestar import Response
from litestar.response import Stream
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import budgets, cache, ledger
from app.audio.container import forwarded_filename
from app.audio.measure import measure
from app.auth import Principal
from app.catalog import Catalog, Route
from app.errors import EarmarkError, InvalidRequest, ServiceUnavailable
from app.executors import Executors
from app.form import Form, Upload, read_form
from app.local_provider import LocalProvider
from app.metering import Usage, cost_nanos, estimated_audio_tokens, hold_nanos, usage_from_body
from app.metrics import Metrics
from app.providers import (
    UpstreamError,
    UpstreamTimeout,
    send,
    should_fall_back,
    upstream_error_body,
)

FORMATS = {
    "transcriptions": frozenset({"json", "text", "srt", "verbose_json", "vtt", "diarized_json"}),
    "translations": frozenset({"json", "text", "srt", "verbose_json", "vtt"}),
}
REQUEST_TYPES = {"transcriptions": "transcription", "translations": "translation"}
MAX_MODEL_LENGTH = 200  # the ledger's column


NO_USAGE = Usage()
TEXT_PLAIN = "text/plain"  # Litestar adds the charset (see _ok)
_CHARSET = re.compile(r";\s*charset=[^;]*", re.IGNORECASE)
logger = logging.getLogger("earmark")


@dataclass(frozen=True, slots=True)
class Gateway:
    """What audio calls need of the process: built in the lifespan."""

    engine: AsyncEngine
    http: httpx.AsyncClient
    catalog: Catalog
    provider_keys: dict[str, str]
    metrics: Metrics
    local: LocalProvider
    executors: Executors


@dataclass(frozen=True, slots=True)
class CallRequest:
    request_id: str
    principal: Principal
    endpoint: str  # transcriptions | translations
    body: AsyncIterator[bytes]
    content_type: str | None
    content_length: str | None
    send_raw: bool
    started: float
    cache_header: str | None = None  # x-bf-cache: no-cache, no-store


def _elapsed_ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


def _upstream_error_kind(status: int) -> str | None:
    if status >= 500:
        return "status_5xx"
    if status == 429:
        return "status_429"
    return "status_4xx" if status >= 400 else None


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"`{name}` was given more than once.", param=name)
    return values[0]


class CallOptions(msgspec.Struct, frozen=True):
    model: str
    response_format: str
    stream: bool


def read_options(fields: dict[str, list[str]], endpoint: str) -> CallOptions:
    model = (_single(fields, "model") or "").strip()
    if not model:
        raise InvalidRequest("Missing `model`: name the model to transcribe with.", param="model")
    if len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        raise InvalidRequest(
            f"`model` must be a printable name of at most {MAX_MODEL_LENGTH} characters.",
            param="model",
        )
    response_format = _single(fields, "response_format") or "json"
    if response_format not in FORMATS[endpoint]:
        shown = response_format if len(response_format) <= 40 else response_format[:40] + "…"
        raise InvalidRequest(
            f"`response_format` must be one of {', '.join(sorted(FORMATS[endpoint]))}; "
            f"got {shown!r}.",
            param="response_format",
        )
    stream_text = (_single(fields, "stream") or "false").lower()
    if stream_text not in ("true", "false"):
        raise InvalidRequest("`stream` must be true or false.", param="stream")
    temperature = _single(fields, "temperature")
    if temperature is not None:
        try:
            valid = 0 <= float(temperature) <= 1
        except ValueError:
            valid = False
        if not valid:
            raise InvalidRequest("`temperature` must be a number from 0 to 1.", param="temperature")
    return CallOptions(model=model, response_format=response_format, stream=stream_text == "true")


def _meter(route: Route, reported: Usage, probed_ms: int) -> tuple[Usage, str, int]:
    """Usage to bill and its source. The provider's numbers win; the probed duration fills
    in audio seconds; a token-priced call with no token count is billed an estimate."""
    source = "probe" if reported == NO_USAGE else "provider"
    usage = msgspec.structs.replace(
        reported, audio_ms=probed_ms if reported.audio_ms is None else reported.audio_ms
    )
    price = route.config.price
    if price.is_token_priced and usage.total_tokens is None:
        usage = msgspec.structs.replace(
            usage, input_audio_tokens=estimated_audio_tokens(price, probed_ms)
        )
        source = "estimate"
    return usage, source, cost_nanos(price, usage)


async def _measure_and_hold(
    gateway: Gateway, call: CallRequest, opening: ledger.Opening, form: Form, route: Route
) -> tuple[Upload, list[Route]]:
    """Measure the audio (in the probe pool, under the model's limits), then hold the most
    the call can cost and open its ledger row, in one transaction."""
    assert form.upload is not None
    audio = await gateway.executors.probe.run(
        call.principal.tenant_id, measure, form.upload.file, form.upload.size, route.audio_limits
    )
    opening.probed_audio_ms = audio.duration_ms
    # Named for the format measured, so the provider decodes what was measured.
    upload = dataclasses.replace(
        form.upload, filename=forwarded_filename(form.upload.filename, audio.container)
    )
    candidates = [route, *gateway.catalog.fallbacks[route.name]]
    prompt = _single(form.fields, "prompt") or ""
    # A fallback may cost more than the route asked for: hold the most any could cost.
    opening.hold_nanos = max(
        hold_nanos(c.config.price, audio.duration_ms, prompt) for c in candidates
    )
    await ledger.open_call(
        gateway.engine,
        opening,
        route.provider_name,
        route.upstream_model,
        limits=call.principal.rate_limits,
    )
    gateway.metrics.call_opened(opening.hold_nanos)
    return upload, candidates


async def handle_call(gateway: Gateway, call: CallRequest) -> Response[Any]:
    principal = call.principal
    opening = ledger.Opening(
        id=call.request_id,
        key_id=principal.key_id,
        tenant_id=principal.tenant_id,
        endpoint=REQUEST_TYPES[call.endpoint],
        model_requested="",
    )
    route: Route | None = None
    form: Form | None = None
    try:
        try:
            # Cheapest refusals first: a used-up budget before a byte of the body is read.
            if principal.exhausted_budget_id is not None:
                raise await budgets.used_up(gateway.engine, principal.exhausted_budget_id)
            form = await read_form(call.body, call.content_type, call.content_length)
            assert form.upload is not None
            opening.upload_bytes = form.upload.size
            options = read_options(form.fields, call.endpoint)
            opening.model_requested = options.model
            opening.response_format = options.response_format
            opening.stream = options.stream
            route = gateway.catalog.resolve(options.model)
            gateway.catalog.check_allowed(route, options.model, principal.allowed_models)
            upload, candidates = await _measure_and_hold(gateway, call, opening, form, route)
        except EarmarkError as error:
            gateway.metrics.call_ended(
                tenant=principal.tenant_id,
                endpoint=opening.endpoint,
                model=route.name if route else None,
                provider=route.provider_name if route else None,
                status=error.status_code,
                outcome="rejected",
                seconds=time.perf_counter() - call.started,
            )
            await ledger.record_rejection(
                gateway.engine, opening, error.status_code, error.code, _elapsed_ms(call.started)
            )
            raise
        return await _forward_call(
            gateway, call, opening, options, form.fields, upload, route, candidates
        )
    finally:
        if form is not None:
            form.close()


async def _forward_call(
    gateway: Gateway,
    call: CallRequest,
    opening: ledger.Opening,
    options: CallOptions,
    fields: dict[str, list[str]],
    upload: Upload,
    route: Route,
    candidates: list[Route],
) -> Response[Any]:
    forward = _Forward(gateway, call, opening, options, fields, upload, route)
    try:
        forward.lookup = await cache.prepare(
            route,
            call.endpoint,
            fields,
            upload,
            tenant_id=call.principal.tenant_id,
            key_allows=call.principal.cache,
            header=call.cache_header,
            files=gateway.executors.files,
        )
        if forward.lookup and forward.lookup.read:
            entry = await cache.find(gateway.engine, forward.lookup.key)
            gateway.metrics.cache_lookups.labels(
                route.name, route.provider_name, "hit" if entry else "miss"
            ).inc()
            if entry is not None:
                return await forward.replay(entry)
        if not await ledger.mark_forwarded(gateway.engine, call.request_id):
            raise ServiceUnavailable(
                "The call's budget hold expired before it could be sent; nothing was sent "
                "upstream. Retry it.",
                code="hold_expired",
            )
        return await forward.run(candidates)
    except BaseException as error:
        # Whatever went wrong, the row is settled (cancellation included) at zero cost.
        status = error.status_code if isinstance(error, EarmarkError) else 500
        code = error.code if isinstance(error, EarmarkError) else type(error).__name__
        with anyio.CancelScope(shield=True):
            await forward.settle("failed", status, route, error_code=code)
        raise


class _Forward:
    """The upstream part of one call, with fallbacks; settles the ledger row."""

    def __init__(
        self,
        gateway: Gateway,
        call: CallRequest,
        opening: ledger.Opening,
        options: CallOptions,
        fields: dict[str, list[str]],
        upload: Upload,
        requested: Route,
    ) -> None:
        self.gateway = gateway
        self.call = call
        self.opening = opening
        self.options = options
        self.fields = fields
        self.upload = upload
        self.attempts = 0
        self.upstream_started = time.perf_counter()
        self.settled = False
        self.requested = requested
        self.lookup: cache.Lookup | None = None

    async def settle(
        self,
        status: str,
        http_status: int,
        route: Route,
        *,
        usage: Usage = NO_USAGE,
        source: str | None = None,
        cost: int = 0,
        error_code: str | None = None,
    ) -> None:
        if self.settled:
            return
        self.settled = True
        try:
            await ledger.settle_call(
                self.gateway.engine,
                self.call.request_id,
                ledger.Settlement(
                    status=status,
                    http_status=http_status,
                    provider=route.provider_name,
                    model=route.upstream_model,
                    attempts=self.attempts,
                    usage=usage,
                    usage_source=source,
                    cost_nanos=cost,
                    latency_ms=_elapsed_ms(self.call.started),
                    upstream_latency_ms=_elapsed_ms(self.upstream_started),
                    error_code=error_code,
                ),
            )
        finally:
            # Counted even if the database failed: the sweeper settles the row later,
            # and this process holds nothing any more.
            self.gateway.metrics.call_ended(
                tenant=self.call.principal.tenant_id,
                endpoint=self.opening.endpoint,
                model=route.name,
                provider=route.provider_name,
                status=http_status,
                outcome=status,
                seconds=time.perf_counter() - self.call.started,
                usage=usage,
                cost_nanos=cost,
                hold_nanos=self.opening.hold_nanos,
            )

    async def _settle_used(self, status: str, route: Route, reported: Usage) -> Usage:
        """Settle an answered call at the cost of what it used (see ``_meter``)."""
        usage, source, cost = _meter(route, reported, self.opening.probed_audio_ms or 0)
        await self.settle(status, 200, route, usage=usage, source=source, cost=cost)
        return usage

    async def _keep(self, route: Route, content_type: str, body: bytes, usage: Usage) -> None:
        """Store the requested model's answer for later identical calls. The call is
        settled and answered whatever happens here."""
        if not (self.lookup and self.lookup.write and route.name == self.requested.name):
            return
        try:
            await cache.store(self.gateway.engine, self.lookup, route, content_type, body, usage)
        except SQLAlchemyError as error:
            logger.warning("could not store %s in the cache: %s", self.call.request_id, error)

    async def replay(self, entry: cache.Entry) -> Response[Any]:
        """Answer from the cache: settled at the hit price, nothing sent upstream."""
        route, lookup = self.requested, self.lookup
        assert lookup is not None
        cost = cost_nanos(lookup.config.hit_price, entry.usage)
        await self.settle("succeeded", 200, route, usage=entry.usage, source="cache", cost=cost)
        headers = {cache.HEADER: "hit"}
        debug = {
            "cache_hit": True,
            "cache_id": entry.key,
            "hit_type": "direct",
            "requested_provider": route.provider_name,
            "requested_model": route.model,
        }
        if not entry.content_type.startswith("application/json"):
            return _ok(entry.body, entry.content_type, headers)
        decoded = msgspec.json.decode(entry.body)
        if self.options.stream:
            return Stream(
                _replay_events(decoded),
                status_code=200,
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        decoded["extra_fields"] = {**self._extra_fields(route), "cache_debug": debug}
        return _ok(msgspec.json.encode(decoded), "application/json", headers)

    def _upstream_format(self, route: Route) -> str:
        # OpenAI sends no usage with `text`; ask for JSON and render the text here, so a
        # token-priced call is billed its real tokens whatever format the caller chose.
        wanted = self.options.response_format
        if wanted == "text" and route.config.price.is_token_priced and not self.options.stream:
            return "json"
        return wanted

    async def run(self, candidates: list[Route]) -> Response[Any]:
        failure: EarmarkError | None = None
        for index, route in enumerate(candidates):
            last = index == len(candidates) - 1
            fields = {**self.fields, "response_format": [self._upstream_format(route)]}
            self.attempts += 1
            self.upstream_started = time.perf_counter()
            api_key = self.gateway.provider_keys.get(route.provider_name)
            metrics = self.gateway.metrics
            try:
                if route.provider.kind == "local":
                    response = await self.gateway.local.send(
                        route,
                        self.call.endpoint,
                        fields,
                        self.upload,
                        self.call.principal.tenant_id,
                    )
                else:
                    response = await send(
                        self.gateway.http, route, api_key, self.call.endpoint, fields, self.upload
                    )
            except UpstreamError as error:
                kind = "timeout" if isinstance(error, UpstreamTimeout) else "unreachable"
                metrics.upstream_attempt(route.provider_name, route.name, self._attempt_s(), kind)
                failure = error
                continue
            metrics.upstream_attempt(
                route.provider_name,
                route.name,
                self._attempt_s(),
                _upstream_error_kind(response.status_code),
            )
            if should_fall_back(response) and not last:
                await response.aclose()
                continue
            return await self._answer(route, response)
        assert failure is not None
        raise failure

    def _attempt_s(self) -> float:
        return time.perf_counter() - self.upstream_started

    async def _answer(self, route: Route, response: httpx.Response) -> Response[Any]:
        content_type = response.headers.get("content-type", "")
        if response.status_code < 400 and content_type.startswith("text/event-stream"):
            return Stream(
                self._relay(route, response),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        try:
            body = await response.aread()
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"{route.provider_name} stopped answering.", code="upstream_timeout"
            ) from None
        except httpx.TransportError as error:
            raise UpstreamError(
                f"{route.provider_name} broke the connection: {type(error).__name__}.",
                code="upstream_unreachable",
            ) from None
        finally:
            await response.aclose()
        if response.status_code >= 400:
            return await self._refusal(route, response.status_code, body)
        return await self._success(route, content_type, body)

    async def _refusal(self, route: Route, upstream_status: int, body: bytes) -> Response[Any]:
        status = 502 if upstream_status >= 500 else upstream_status
        envelope = upstream_error_body(route, upstream_status, body)
        await self.settle("failed", status, route, error_code=envelope["error"]["code"])
        headers = {} if status in (429, 502) else {"x-should-retry": "false"}
        return Response(envelope, status_code=status, headers=headers)

    def _sends_raw(self, route: Route) -> bool:
        return self.call.send_raw and route.provider.allow_raw_response

    def _extra_fields(self, route: Route, raw: Any = None) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "request_type": REQUEST_TYPES[self.call.endpoint],
            "provider": route.provider_name,
            "model_requested": self.options.model,
            "model_deployment": route.upstream_model,
            "latency": _elapsed_ms(self.call.started),
            "chunk_index": 0,
        }
        if self._sends_raw(route):
            extra["raw_request"] = {
                name: values if len(values) > 1 else values[0]
                for name, values in self.fields.items()
            }
            extra["raw_response"] = raw
        return extra

    def _cache_headers(self) -> dict[str, str]:
        return {cache.HEADER: "miss"} if self.lookup else {}

    async def _success(self, route: Route, content_type: str, body: bytes) -> Response[Any]:
        if not content_type.startswith("application/json"):
            usage = await self._settle_used("succeeded", route, NO_USAGE)
            media_type = content_type or "text/plain"
            await self._keep(route, media_type, body, usage)
            return _ok(body, media_type, self._cache_headers())
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            self.gateway.metrics.upstream_errors.labels(route.provider_name, "malformed").inc()
            raise UpstreamError(
                f"{route.provider_name} sent a malformed JSON answer.", code="upstream_malformed"
            ) from None
        usage = await self._settle_used("succeeded", route, usage_from_body(decoded))
        if self._upstream_format(route) != self.options.response_format:
            text = decoded.get("text", "") if isinstance(decoded, dict) else ""
            rendered = f"{text}\n".encode()
            await self._keep(route, TEXT_PLAIN, rendered, usage)
            return _ok(rendered, TEXT_PLAIN, self._cache_headers())
        await self._keep(route, "application/json", body, usage)
        if isinstance(decoded, dict):
            raw = msgspec.json.decode(body) if self._sends_raw(route) else None  # untouched
            decoded["extra_fields"] = self._extra_fields(route, raw)
            if self.lookup:
                decoded["extra_fields"]["cache_debug"] = {"cache_hit": False}
        return _ok(msgspec.json.encode(decoded), "application/json", self._cache_headers())

    async def _relay(self, route: Route, response: httpx.Response) -> AsyncIterator[bytes]:
        """Relay the provider's events unchanged, watching for the final usage."""
        done: dict[str, Any] | None = None
        pending = b""
        finished = False
        try:
            async for chunk in response.aiter_bytes():
                pending = (pending + chunk).replace(b"\r\n", b"\n")
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    done = _done_event(event) or done
                yield chunk
            finished = True
        finally:
            # Runs on normal end, upstream failure and client disconnect alike.
            with anyio.CancelScope(shield=True):
                await response.aclose()
                reported = usage_from_body(done) if done else NO_USAGE
                usage = await self._settle_used(
                    "succeeded" if finished else "interrupted", route, reported
                )
                # Kept as its final result: the JSON answer the same call without `stream`
                # gets (and only for `json`, which that answer is).
                if finished and done is not None and self.options.response_format == "json":
                    final = {key: value for key, value in done.items() if key != "type"}
                    await self._keep(route, "application/json", msgspec.json.encode(final), usage)


def _ok(body: bytes, media_type: str, headers: dict[str, str]) -> Response[bytes]:
    if media_type.startswith("text/"):  # Litestar appends "; charset=utf-8" itself
        media_type = _CHARSET.sub("", media_type)
    return Response(body, status_code=200, media_type=media_type, headers=headers)


def _done_event(event: bytes) -> dict[str, Any] | None:
    """The payload of a ``transcript.text.done`` event (final text and usage), if it is one."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            payload = msgspec.json.decode(line[5:].strip())
        except msgspec.DecodeError:
            continue
        if isinstance(payload, dict) and payload.get("type") == "transcript.text.done":
            return payload
    return None


async def _replay_events(final: dict[str, Any]) -> AsyncIterator[bytes]:
    """A cached final result as the stream a provider would send: the text, then done."""
    text = final.get("text", "")
    for event in (
        {"type": "transcript.text.delta", "delta": text},
        {**final, "type": "transcript.text.done"},
    ):
        yield b"data: " + msgspec.json.encode(event) + b"\n\n"
