"""Upstream attempts: the requested model, then its fallbacks, each attempt recorded.

An attempt's outcome says what the provider may have billed: ``answered`` (a 2xx: it
billed the usage it reports), ``refused`` (an error status: it billed nothing),
``failed`` (it never had the whole request, or is this machine: nothing billed), or
``uncertain`` (it had the whole request and no answer came: a timeout or a reset after
sending; it may have done and billed the work, so the attempt is charged its expected
cost and the call goes to review). A connection the provider dropped before it had the
whole request is tried once more on the same route; a provider's own trouble (5xx, 429, a
failure) moves on to the next fallback; an uncertain attempt stays charged when a
fallback then answers, because both providers may bill.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from app.billing import ledger
from app.billing.metering import NANOS_PER_USD
from app.catalog import ModelRoute
from app.errors import (
    DATABASE_ERRORS,
    DatabaseUnavailable,
    ServiceUnavailable,
    database_unavailable,
)
from app.providers import AttemptFailed, Progress, UpstreamRequest, UpstreamResponse
from app.storage import database

if TYPE_CHECKING:
    from app.gateway.admission import Admitted
    from app.gateway.call import CallRequest, Gateway

logger = logging.getLogger("earmark")


@dataclass(slots=True)
class Attempt:
    n: int
    route: ModelRoute
    started_at: datetime
    outcome: str = "failed"  # answered | refused | failed | uncertain
    http_status: int | None = None
    error: str | None = None  # timeout, unreachable, dropped, reset, status_5xx, …
    bytes_sent: int = 0
    latency_ms: int = 0
    charged_nanos: int = 0  # what this attempt adds to the call's cost beyond the answer's

    def uncertain(self, expected: int, error: str) -> None:
        self.outcome, self.error, self.charged_nanos = "uncertain", error, expected


@dataclass(slots=True)
class Forwarded:
    """Where forwarding ended: the last attempt's answer, or its failure."""

    attempts: list[Attempt]
    route: ModelRoute  # the last attempt's
    response: UpstreamResponse | None
    failure: AttemptFailed | None

    @property
    def charged_nanos(self) -> int:
        return sum(attempt.charged_nanos for attempt in self.attempts)


def upstream_format(route: ModelRoute, response_format: str, stream: bool) -> str:
    """OpenAI sends no usage with `text`: ask a token-priced model for JSON and render the
    text here, so the call is billed its real tokens whatever format the caller chose."""
    if response_format == "text" and route.config.price.is_token_priced and not stream:
        return "json"
    return response_format


async def _can_hold(
    gateway: Gateway,
    call: CallRequest,
    admitted: Admitted,
    opening: ledger.Opening,
    attempts: list[Attempt],
    route: ModelRoute,
) -> bool:
    """Whether the call holds enough for a fallback to ``route``: the most it may cost, on
    top of what the attempts before it are charged; held more now if need be. False when a
    budget on the path has no room for it, or the database cannot say."""
    needed = sum(a.charged_nanos for a in attempts) + admitted.hold_on(route)
    extra = needed - opening.hold_nanos
    if extra <= 0:
        return True
    try:
        raised = await ledger.raise_hold(gateway.engine, call.request_id, extra)
    except DATABASE_ERRORS as error:
        if not database_unavailable(error):
            raise
        raised = False
    if raised:
        opening.hold_nanos = needed
        gateway.metrics.held_usd.inc(extra / NANOS_PER_USD)
    else:
        logger.warning(
            "%s: no fallback to %s, its budgets cannot hold it", call.request_id, route.name
        )
    return raised


def _marking_sent(gateway: Gateway, call: CallRequest) -> Callable[[], Awaitable[None]]:
    """What a provider awaits before an attempt's last request bytes go: the row says
    that the call may now be billed (first attempt's time kept), and that it is still
    open. If the database cannot say so, the attempt stops there, unsent: no provider had
    the whole request, so the tenant is told nothing was billed."""

    async def before_last() -> None:
        try:
            still_open = await ledger.mark_sent(gateway.engine, call.request_id)
        except DATABASE_ERRORS as error:
            if not database_unavailable(error):
                raise
            raise DatabaseUnavailable(
                "The gateway's database is unavailable, so the request was stopped before "
                "a provider had it whole: nothing was billed. Retry shortly."
            ) from None
        if not still_open:  # finished by a sweeper meanwhile: it must not be billed now
            raise ServiceUnavailable(
                "This call took too long to reach its provider and was cancelled before "
                "a provider had it whole: nothing was billed. Retry.",
                code="call_expired",
            )

    return before_last


def _error_kind(status: int) -> str | None:
    if status >= 500:
        return "status_5xx"
    if status == 429:
        return "status_429"
    return "status_4xx" if status >= 400 else None


async def forward(
    gateway: Gateway,
    call: CallRequest,
    admitted: Admitted,
    attempts: list[Attempt],
    opening: ledger.Opening,
) -> Forwarded:
    """Attempt each candidate in turn; ``attempts`` (the caller's, so that a call abandoned
    mid-attempt still knows what was sent) receives one record per attempt. A fallback is
    tried only if the call's budgets can hold what it may cost on top of what the attempts
    before it are charged (``opening.hold_nanos`` grows with it)."""
    before_last = _marking_sent(gateway, call)
    previous: Forwarded | None = None
    for n, route in enumerate(admitted.candidates, 1):
        if previous is not None and not await _can_hold(
            gateway, call, admitted, opening, attempts, route
        ):
            return previous
        previous = await _attempt(gateway, call, admitted, attempts, route, before_last)
        if previous.failure is not None and previous.failure.kind == "dropped":
            # Most often a pooled keep-alive connection the provider closed, idle, as this
            # call took it. It never had the whole request, so it cannot have done the
            # work: sent once more, on another connection (RFC 9112, 9.3.1.1).
            previous = await _attempt(gateway, call, admitted, attempts, route, before_last)
        response = previous.response
        last = n == len(admitted.candidates)
        if last or (response is not None and response.status < 500 and response.status != 429):
            return previous
        if response is not None:
            await response.close()
    raise AssertionError("a route has at least one candidate")


async def _attempt(
    gateway: Gateway,
    call: CallRequest,
    admitted: Admitted,
    attempts: list[Attempt],
    route: ModelRoute,
    before_last: Callable[[], Awaitable[None]],
) -> Forwarded:
    """One attempt at ``route``, recorded: its answer, or how it failed."""
    attempt = Attempt(n=len(attempts) + 1, route=route, started_at=database.utcnow())
    attempts.append(attempt)
    options = admitted.options
    fields = {
        **admitted.fields,
        "model": [route.upstream_model],
        "response_format": [upstream_format(route, options.response_format, options.stream)],
    }
    if "stream" in fields:  # as it was read (`True` is true), not as a provider might read it
        fields["stream"] = ["true" if options.stream else "false"]
    request = UpstreamRequest(
        route=route,
        operation=call.operation,
        fields=fields,
        upload=admitted.upload,
        request_id=call.request_id,
        owner=call.principal.tenant_id,
        progress=Progress(before_last=before_last),
    )
    started = time.perf_counter()
    try:
        response = await gateway.providers[route.provider_name].send(request)
    except AttemptFailed as failure:
        attempt.bytes_sent = failure.bytes_sent
        attempt.latency_ms = int((time.perf_counter() - started) * 1000)
        if failure.reached:
            attempt.uncertain(admitted.expected_on(route), failure.kind)
        else:
            attempt.error = failure.kind
        gateway.metrics.upstream_attempt(
            route.provider_name, route.name, time.perf_counter() - started, failure.kind
        )
        return Forwarded(attempts, route, None, failure)
    except BaseException:
        # The caller left (or something broke) mid-attempt: a provider that had the
        # whole request may do the work anyway.
        attempt.bytes_sent = request.progress.bytes_sent
        attempt.latency_ms = int((time.perf_counter() - started) * 1000)
        if request.progress.reached:
            attempt.uncertain(admitted.expected_on(route), "abandoned")
        raise
    attempt.latency_ms = int((time.perf_counter() - started) * 1000)
    attempt.bytes_sent = request.progress.bytes_sent
    attempt.http_status = response.status
    attempt.outcome = "answered" if response.status < 400 else "refused"
    attempt.error = _error_kind(response.status)
    gateway.metrics.upstream_attempt(
        route.provider_name, route.name, time.perf_counter() - started, attempt.error
    )
    return Forwarded(attempts, route, response, None)
