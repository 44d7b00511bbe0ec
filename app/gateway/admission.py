"""Everything decided before a call may go upstream, cheapest refusals first.

A key with a used-up budget is refused before a byte of the body is read; the form's
fields are checked before the audio is opened; the audio is measured (in the probe pool,
under the model's limits) before anything is held; the cache is asked, so a hit is held
at its own price; then, in one transaction, the rate limits admit the call, its expected
cost is held on every budget on its path, and its ledger row is written: ``forwarded``
(it goes upstream next), or ``reserved`` for a hit about to be settled. Any refusal is an
``EarmarkError`` (a 4xx or 503).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from app.audio.container import forwarded_filename
from app.audio.measure import measure, measure_inline
from app.billing import budgets, ledger
from app.billing.metering import cost_nanos, expected_nanos, hold_nanos
from app.billing.rate_limits import RateLimited
from app.catalog import ModelRoute
from app.errors import InvalidRequest
from app.gateway import cache, idempotency
from app.gateway.form import Form, Upload, read_form

if TYPE_CHECKING:
    from app.gateway.call import CallRequest, Gateway

FORMATS = {
    "transcriptions": frozenset({"json", "text", "srt", "verbose_json", "vtt", "diarized_json"}),
    "translations": frozenset({"json", "text", "srt", "verbose_json", "vtt"}),
}
MAX_MODEL_LENGTH = 200  # the ledger's column


class CallOptions(msgspec.Struct, frozen=True):
    model: str
    response_format: str
    stream: bool


@dataclass(frozen=True, slots=True)
class Admitted:
    """A call whose ledger row is open, holding its expected cost."""

    options: CallOptions
    fields: dict[str, list[str]]
    upload: Upload  # named for the format measured, so the provider decodes what was
    route: ModelRoute  # the model asked for
    candidates: list[ModelRoute]  # it, then its fallbacks
    audio_ms: int
    prompt: str
    lookup: cache.Lookup | None = None  # the call's place in the cache, if it applies
    hit: cache.Entry | None = None  # the cache's answer: nothing goes upstream

    def expected_on(self, route: ModelRoute) -> int:
        """What one attempt on ``route`` is expected to cost: charged when its outcome is
        uncertain."""
        return expected_nanos(route.config.price, route.billing, self.audio_ms, self.prompt)

    def hold_on(self, route: ModelRoute) -> int:
        """The most one attempt on ``route`` may cost: what is held for it (its expected
        cost for a duration price)."""
        return hold_nanos(route.config.price, route.billing, self.audio_ms, self.prompt)


def single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest(f"`{name}` was given more than once.", param=name)
    return values[0]


def read_options(fields: dict[str, list[str]], operation: str) -> CallOptions:
    model = (single(fields, "model") or "").strip()
    if not model:
        raise InvalidRequest("Missing `model`: name the model to transcribe with.", param="model")
    if len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        raise InvalidRequest(
            f"`model` must be a printable name of at most {MAX_MODEL_LENGTH} characters.",
            param="model",
        )
    response_format = single(fields, "response_format") or "json"
    if response_format not in FORMATS[operation]:
        shown = response_format if len(response_format) <= 40 else response_format[:40] + "…"
        raise InvalidRequest(
            f"`response_format` must be one of {', '.join(sorted(FORMATS[operation]))}; "
            f"got {shown!r}.",
            param="response_format",
        )
    stream_text = (single(fields, "stream") or "false").lower()
    if stream_text not in ("true", "false"):
        raise InvalidRequest("`stream` must be true or false.", param="stream")
    temperature = single(fields, "temperature")
    if temperature is not None:
        try:  # ASCII only: float() also reads other scripts' digits, which a provider may not
            valid = temperature.isascii() and 0 <= float(temperature) <= 1
        except ValueError:
            valid = False
        if not valid:
            raise InvalidRequest("`temperature` must be a number from 0 to 1.", param="temperature")
    return CallOptions(model=model, response_format=response_format, stream=stream_text == "true")


class Admission:
    """One call's admission. ``route`` is known (for a refusal's metrics) once resolved;
    ``close`` drops the spooled upload."""

    def __init__(self, gateway: Gateway, call: CallRequest, opening: ledger.Opening) -> None:
        self.gateway = gateway
        self.call = call
        self.opening = opening
        self.form: Form | None = None
        self.route: ModelRoute | None = None
        self.claim: idempotency.Claim | None = None  # this call holds its Idempotency-Key
        self.audio_sha256: str | None = None

    async def run(self) -> Admitted:
        gateway, call, opening = self.gateway, self.call, self.opening
        principal = call.principal
        # A retry with an Idempotency-Key may be owed the first call's answer: it is
        # refused, if at all, once its key is looked up.
        if call.idempotency_key is None:
            if principal.exhausted_budget_id is not None:
                raise await budgets.used_up(gateway.engine, principal.exhausted_budget_id)
            gateway.rate_limited.check(
                principal.key_id, principal.rate_limits
            )  # told to wait: not worth a read yet
        form = self.form = await read_form(
            call.body, call.content_type, call.content_length, principal.tenant_id
        )
        assert form.upload is not None
        opening.upload_bytes = form.upload.size
        options = read_options(form.fields, call.operation)
        opening.model_requested = options.model
        opening.response_format = options.response_format
        opening.stream = options.stream
        route = self.route = gateway.catalog.resolve(options.model)
        gateway.catalog.check_allowed(route, options.model, principal.allowed_models)
        upload = form.upload
        if call.idempotency_key is not None:
            await self._claim(form, options, route)
        audio = upload.in_memory and measure_inline(upload.file, upload.size, route.audio_limits)
        if not audio:
            audio = await gateway.executors.probe.run(
                principal.tenant_id,
                measure,
                upload.file,
                upload.size,
                route.audio_limits,
                gateway.sandbox,
            )
        admitted = Admitted(
            options=options,
            fields=form.fields,
            upload=dataclasses.replace(
                form.upload, filename=forwarded_filename(form.upload.filename, audio.container)
            ),
            route=route,
            candidates=[route, *gateway.catalog.fallbacks[route.name]],
            audio_ms=audio.duration_ms,
            prompt=single(form.fields, "prompt") or "",
        )
        opening.probed_audio_ms = audio.duration_ms
        admitted = await self._ask_cache(admitted)
        if admitted.hit is not None:  # held at what the hit costs, so a free hit always fits
            assert admitted.lookup is not None
            opening.expected_nanos = opening.hold_nanos = cost_nanos(
                admitted.lookup.config.hit_price, admitted.hit.usage
            )
        else:
            # A fallback that may cost more holds the difference before it is tried.
            opening.expected_nanos = admitted.expected_on(route)
            opening.hold_nanos = admitted.hold_on(route)
        try:
            await ledger.open_call(
                gateway.engine,
                opening,
                route.provider_name,
                route.upstream_model,
                status="reserved" if admitted.hit else "forwarded",
                limits=principal.rate_limits,
                retry_after=gateway.typical_call_seconds(route),
            )
        except RateLimited as refusal:
            assert principal.rate_limits is not None
            gateway.rate_limited.remember(principal.key_id, principal.rate_limits, refusal)
            raise
        gateway.metrics.call_opened(opening.hold_nanos)
        return admitted

    async def _claim(self, form: Form, options: CallOptions, route: ModelRoute) -> None:
        """Hold the call's Idempotency-Key, or end here: the first call's answer
        (``idempotency.Replayed``), or a 409 or 422."""
        gateway, call = self.gateway, self.call
        if options.stream:
            raise InvalidRequest(
                "`Idempotency-Key` cannot be used with `stream=true`: a stream is not kept "
                "to be sent again.",
                param="Idempotency-Key",
            )
        assert form.upload is not None and call.idempotency_key is not None
        self.audio_sha256 = await cache.audio_sha256(
            form.upload, call.principal.tenant_id, gateway.executors.files
        )
        self.claim = await idempotency.claim(
            gateway.engine,
            key_id=call.principal.key_id,
            key=call.idempotency_key,
            digest=idempotency.request_digest(call.operation, form.fields, self.audio_sha256),
            call_id=call.request_id,
            retention=gateway.idempotency_retention,
            retry_after=gateway.typical_call_seconds(route),
        )

    async def _ask_cache(self, admitted: Admitted) -> Admitted:
        gateway, call, route = self.gateway, self.call, admitted.route
        lookup = await cache.prepare(
            route,
            call.operation,
            admitted.fields,
            admitted.upload,
            tenant_id=call.principal.tenant_id,
            key_allows=call.principal.cache,
            header=call.cache_header,
            files=gateway.executors.files,
            audio=self.audio_sha256,
        )
        if lookup is None:
            return admitted
        hit = await cache.find(gateway.engine, lookup.key) if lookup.read else None
        if lookup.read:
            result = "hit" if hit else "miss"
            gateway.metrics.cache_lookups.labels(route.name, route.provider_name, result).inc()
        return dataclasses.replace(admitted, lookup=lookup, hit=hit)

    def close(self) -> None:
        if self.form is not None:
            self.form.close()
