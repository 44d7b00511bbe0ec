"""A call's ledger row, settled once: its cost, its attempts, its metrics.

The cost is what the answer used (the provider's usage, else the measured audio under
the model's billing rule, else an estimate), plus the expected cost of every attempt
whose outcome is uncertain. A call charged for an uncertain attempt, or charged more
than it held, is marked for review and counted. A refused call is written once, as
``rejected``. Metrics are counted here whatever the database does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from app.billing import ledger
from app.billing.budgets import BudgetExceeded
from app.billing.metering import NO_USAGE, Usage, meter
from app.catalog import ModelRoute
from app.errors import DATABASE_ERRORS, EarmarkError, database_unavailable

if TYPE_CHECKING:
    from app.gateway.admission import Admitted
    from app.gateway.call import CallRequest, Gateway
    from app.gateway.forwarding import Attempt


logger = logging.getLogger("earmark")
# Settlements whose callers were cancelled, being written: kept here until done.
_FINISHING: set[asyncio.Future[None]] = set()


def _elapsed_ms(since: float) -> int:
    return int((time.perf_counter() - since) * 1000)


async def reject(
    gateway: Gateway,
    call: CallRequest,
    opening: ledger.Opening,
    route: ModelRoute | None,
    error: EarmarkError,
) -> None:
    """A call refused before it held anything: one ``rejected`` row, counted."""
    gateway.metrics.call_ended(
        tenant=call.principal.tenant_id,
        endpoint=opening.endpoint,
        model=route.name if route else None,
        provider=route.provider_name if route else None,
        status=error.status_code,
        outcome="rejected",
        seconds=time.perf_counter() - call.started,
    )
    exhausted = error.budget_id if isinstance(error, BudgetExceeded) else None
    await ledger.record_rejection(
        gateway.engine, opening, error.status_code, error.code, _elapsed_ms(call.started), exhausted
    )


class Settlement:
    """The settlement of one admitted call; only its first ``settle`` writes."""

    def __init__(
        self, gateway: Gateway, call: CallRequest, opening: ledger.Opening, admitted: Admitted
    ) -> None:
        self.gateway = gateway
        self.call = call
        self.opening = opening
        self.admitted = admitted
        self.attempts: list[Attempt] = []  # filled by forwarding as it goes
        self.upstream_started: float | None = None
        self.settled = False

    async def answered(
        self, route: ModelRoute, reported: Usage, *, status: str = "succeeded"
    ) -> Usage:
        """Settle a call the provider answered, at the cost of what it used."""
        usage, source, cost = meter(
            route.config.price, route.billing, reported, self.admitted.audio_ms
        )
        await self.settle(status, 200, route, usage=usage, source=source, cost=cost)
        return usage

    async def cached(self, usage: Usage) -> None:
        """Settle a call the cache answered, at what it held: the hit's price."""
        route, cost = self.admitted.route, self.opening.expected_nanos
        await self.settle("succeeded", 200, route, usage=usage, source="cache", cost=cost)

    async def failed(self, http_status: int, error_code: str | None, route: ModelRoute) -> int:
        """Settle a call with no answer to bill; returns what its uncertain attempts cost."""
        await self.settle("failed", http_status, route, error_code=error_code)
        return sum(attempt.charged_nanos for attempt in self.attempts)

    async def settle(
        self,
        status: str,
        http_status: int,
        route: ModelRoute,
        *,
        usage: Usage = NO_USAGE,
        source: str | None = None,
        cost: int = 0,
        error_code: str | None = None,
    ) -> None:
        if self.settled:
            return
        self.settled = True
        gateway, opening = self.gateway, self.opening
        uncertain = [a for a in self.attempts if a.outcome == "uncertain"]
        total = cost + sum(attempt.charged_nanos for attempt in uncertain)
        review = None
        if total > opening.hold_nanos:
            review = "hold_overrun"
            gateway.metrics.hold_overruns.labels(route.name, route.provider_name).inc()
        if uncertain:
            review = "uncertain"
            source = source or "expected"
        for attempt in uncertain:  # whatever made it so: a timeout, a reset, a broken stream
            gateway.metrics.uncertain_attempts.labels(attempt.route.provider_name).inc()
        settlement = ledger.Settlement(
            status=status,
            http_status=http_status,
            provider=route.provider_name,
            model=route.upstream_model,
            attempts=len(self.attempts),
            usage=usage,
            usage_source=source,
            cost_nanos=total,
            review=review,
            latency_ms=_elapsed_ms(self.call.started),
            upstream_latency_ms=(
                _elapsed_ms(self.upstream_started) if self.upstream_started else None
            ),
            error_code=error_code,
            attempt_records=[
                ledger.AttemptRecord(
                    n=a.n,
                    provider=a.route.provider_name,
                    model=a.route.upstream_model,
                    started_at=a.started_at,
                    outcome=a.outcome,
                    http_status=a.http_status,
                    error=a.error,
                    bytes_sent=a.bytes_sent,
                    latency_ms=a.latency_ms,
                    charged_nanos=a.charged_nanos,
                )
                for a in self.attempts
            ],
        )
        try:
            await self._record(settlement)
        except asyncio.CancelledError:
            # This call's task is gone (its client, the server stopping), maybe while its
            # settle waited for another's statement: it is written all the same, never left
            # open to be swept at a guess. Settling twice writes once.
            finishing = asyncio.ensure_future(self._record(settlement))
            _FINISHING.add(finishing)
            finishing.add_done_callback(_FINISHING.discard)
            raise
        finally:
            # Counted even if the database failed: this process holds nothing any more.
            gateway.metrics.call_ended(
                tenant=self.call.principal.tenant_id,
                endpoint=opening.endpoint,
                model=route.name,
                provider=route.provider_name,
                status=http_status,
                outcome=status,
                seconds=time.perf_counter() - self.call.started,
                usage=usage,
                cost_nanos=total,
                hold_nanos=opening.hold_nanos,
            )
            gateway.observe_call(route, time.perf_counter() - self.call.started)

    async def _record(self, settlement: ledger.Settlement) -> None:
        gateway = self.gateway
        try:
            # If a sweeper took the row for lost meanwhile, it is corrected to the truth.
            await ledger.apply_settlement(
                gateway.engine,
                self.call.request_id,
                settlement,
                alerting=self.call.principal.budget_alerts,
            )
        except DATABASE_ERRORS as error:
            if not database_unavailable(error):
                raise
            # The tenant keeps the answer the provider gave (and billed): the settlement
            # waits, durably, for the database to come back.
            await gateway.journal.append(self.call.request_id, settlement)
            gateway.metrics.journal_settlements.labels("kept").inc()
            logger.warning("settlement of %s kept in the journal: %s", self.call.request_id, error)
