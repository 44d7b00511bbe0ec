"""One metered call, end to end: admit, answer from the cache or forward, answer, settle.

Whatever happens after admission (an answer, a refusal, no answer, the client leaving,
a bug) settles the ledger row exactly once; a non-streamed answer is settled before it
is sent, a stream when it ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import msgspec
from litestar import Response
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.auth import Principal
from app.audio.sandbox import Sandbox
from app.billing import ledger
from app.billing.metering import NO_USAGE, Usage, usage_from_body
from app.billing.rate_limits import RecentRefusals
from app.catalog import Catalog, ModelRoute
from app.errors import (
    DATABASE_ERRORS,
    DatabaseUnavailable,
    EarmarkError,
    database_unavailable,
)
from app.gateway import cache, forwarding, idempotency, shaping, streaming
from app.gateway.admission import Admission, Admitted
from app.gateway.forwarding import Forwarded
from app.gateway.settlement import Settlement, reject
from app.ops.journal import Journal
from app.ops.metrics import Metrics
from app.providers import AttemptFailed, Provider
from app.runtime.executors import Executors

logger = logging.getLogger("earmark")


@dataclass(slots=True)
class Gateway:
    """What audio calls need of the process: built in the lifespan."""

    engine: AsyncEngine
    catalog: Catalog
    providers: dict[str, Provider]
    metrics: Metrics
    executors: Executors
    sandbox: Sandbox  # where FFmpeg reads uploads, under a memory cap
    journal: Journal
    rate_limited: RecentRefusals = field(default_factory=RecentRefusals)
    # Seconds a call of each model typically takes (a moving average), for Retry-After.
    call_seconds: dict[str, float] = field(default_factory=dict)
    # How long an Idempotency-Key's answer is kept for retries.
    idempotency_retention: timedelta = timedelta(hours=24)

    def observe_call(self, route: ModelRoute, seconds: float) -> None:
        before = self.call_seconds.get(route.name, seconds)
        self.call_seconds[route.name] = 0.9 * before + 0.1 * seconds

    def typical_call_seconds(self, route: ModelRoute) -> int:
        return min(30, max(1, math.ceil(self.call_seconds.get(route.name, 1.0))))


@dataclass(frozen=True, slots=True)
class CallRequest:
    request_id: str
    principal: Principal
    operation: str  # transcriptions | translations: OpenAI's, from the URL
    body: AsyncIterator[bytes]
    content_type: str | None
    content_length: str | None
    send_raw: bool
    started: float
    cache_header: str | None = None  # x-bf-cache: no-cache, no-store
    idempotency_key: str | None = None


async def handle_call(gateway: Gateway, call: CallRequest) -> Response[Any]:
    opening = ledger.Opening(
        id=call.request_id,
        key_id=call.principal.key_id,
        tenant_id=call.principal.tenant_id,
        endpoint=shaping.REQUEST_TYPES[call.operation],
        model_requested="",
    )
    admission = Admission(gateway, call, opening)
    outcome: Response[Any] | EarmarkError | None = None  # for its Idempotency-Key
    try:
        try:
            with _nothing_sent():
                admitted = await admission.run()
        except idempotency.Replayed as replay:
            return replay.response  # the first call's answer: nothing is billed
        except idempotency.Refused:
            raise  # a retry, not a call of its own
        except EarmarkError as error:
            await reject(gateway, call, opening, admission.route, error)
            raise
        settlement = Settlement(gateway, call, opening, admitted)
        try:
            outcome = await _serve(gateway, call, admitted, settlement)
            return outcome
        except BaseException as error:
            if isinstance(error, EarmarkError):
                outcome = error
            # Whatever went wrong, the row is settled (cancellation included).
            status = error.status_code if isinstance(error, EarmarkError) else 500
            code = error.code if isinstance(error, EarmarkError) else type(error).__name__
            with anyio.CancelScope(shield=True):
                await settlement.failed(status, code, admitted.route)
            raise
    finally:
        admission.close()
        if admission.claim is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await idempotency.finish(gateway.engine, admission.claim, outcome)
                except Exception as error:  # the tenant gets its answer regardless
                    logger.warning(
                        "could not keep or release Idempotency-Key %r: %s",
                        admission.claim.key,
                        error,
                    )


async def _serve(
    gateway: Gateway, call: CallRequest, admitted: Admitted, settlement: Settlement
) -> Response[Any]:
    if admitted.hit is not None:
        with _nothing_sent():
            await settlement.cached(admitted.hit.usage)
        return shaping.replay(call, admitted, admitted.hit)
    settlement.upstream_started = call.started
    forwarded = await forwarding.forward(
        gateway, call, admitted, settlement.attempts, settlement.opening
    )
    return await _answer(gateway, call, admitted, settlement, forwarded)


@contextmanager
def _nothing_sent() -> Iterator[None]:
    """The database failed before anything went upstream: the tenant may safely retry."""
    try:
        yield
    except DATABASE_ERRORS as error:
        if not database_unavailable(error):
            raise
        raise DatabaseUnavailable(
            "The gateway's database is unavailable; nothing was sent upstream. Retry shortly."
        ) from None


async def _answer(
    gateway: Gateway,
    call: CallRequest,
    admitted: Admitted,
    settlement: Settlement,
    forwarded: Forwarded,
) -> Response[Any]:
    route, upstream = forwarded.route, forwarded.response
    if upstream is None:
        failure = forwarded.failure
        assert failure is not None
        status = 504 if failure.kind == "timeout" else 502
        charged = await settlement.failed(status, shaping.failure_code(failure), route)
        raise shaping.no_answer(forwarded, charged)
    if upstream.status >= 400:
        response, status, code = shaping.refusal(route, upstream, forwarded.charged_nanos)
        await settlement.failed(status, code, route)
        return response
    if upstream.read_chunk is not None:

        async def finish(done: dict[str, Any] | None, ended: str) -> None:
            if ended not in ("finished", "left"):  # broken off, after the provider's work:
                # charged as uncertain, once
                forwarded.attempts[-1].uncertain(admitted.expected_on(route), ended)
                await settlement.settle("interrupted", 200, route, error_code=ended)
                return
            reported = usage_from_body(done) if done else NO_USAGE
            status = "succeeded" if ended == "finished" else "interrupted"
            usage = await settlement.answered(route, reported, status=status)
            # Kept as its final result: the JSON answer the same call without `stream`
            # gets (and only for `json`, which that answer is).
            if ended == "finished" and done and admitted.options.response_format == "json":
                final = msgspec.json.encode({k: v for k, v in done.items() if k != "type"})
                await _keep(gateway, admitted, route, "application/json", final, usage)

        return streaming.relay(upstream, finish, route.provider_name)
    try:
        shaped = shaping.answer(call, admitted, route, upstream, admitted.lookup is not None)
    except AttemptFailed as failure:  # answered, so billed: but not the answer it claimed
        forwarded.attempts[-1].uncertain(admitted.expected_on(route), failure.kind)
        gateway.metrics.upstream_errors.labels(route.provider_name, "malformed").inc()
        charged = await settlement.failed(502, "upstream_malformed", route)
        forwarded.failure = failure
        raise shaping.no_answer(forwarded, charged) from None
    usage = await settlement.answered(route, shaped.reported)
    await _keep(gateway, admitted, route, shaped.content_type, shaped.kept, usage)
    return shaped.response


async def _keep(
    gateway: Gateway,
    admitted: Admitted,
    route: ModelRoute,
    content_type: str,
    body: bytes,
    usage: Usage,
) -> None:
    """Store the requested model's answer for later identical calls; the call is settled
    and answered whatever happens here."""
    lookup = admitted.lookup
    if not (lookup and lookup.write and route.name == admitted.route.name):
        return
    try:
        await cache.store(gateway.engine, lookup, route, content_type, body, usage)
    except DATABASE_ERRORS as error:
        logger.warning("could not keep an answer in the cache: %s", error)
