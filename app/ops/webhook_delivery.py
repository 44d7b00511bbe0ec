"""Webhook deliveries: posted from the outbox, signed, retried, never to a private address.

Each process runs ``run_deliveries``: it claims deliveries that are due (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so processes never take the same one), leasing each for a little
longer than an attempt may take, so one whose process died is taken again once its lease
ends: at least once, never lost. Each is posted with Standard Webhooks' headers
(``webhook-id`` the event's id on every attempt, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``); a 2xx ends it,
anything else is retried after an exponential wait with jitter until the event is
``retry_hours`` old, then it is marked failed. Nothing on a call's path waits for this.

Each connection is made to an address the resolver found public (``webhook_targets``),
unless ``EARMARK_WEBHOOKS_ALLOW_PRIVATE`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.ops.webhook_targets import RefusedTarget, is_public, literal_address
from app.settings import Webhooks
from app.storage import database
from app.storage.models import webhook_deliveries, webhook_endpoints, webhook_events

if TYPE_CHECKING:  # prometheus_client is imported once serve has set its directory
    from app.ops.metrics import Metrics

logger = logging.getLogger("earmark")
BATCH = 20  # deliveries claimed at once by a process
MAX_WAIT_SECONDS = 3600.0
_ANSWER_BYTES = 4096  # of a receiver's answer: read, not kept
_jitter = secrets.SystemRandom()


class _PublicOnly(AbstractResolver):
    """Resolves as usual, then keeps only public addresses: the connection is made to an
    address that was checked, so a DNS answer cannot change between check and connect."""

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        public = [entry for entry in found if is_public(entry["host"])]
        if not public:
            raise RefusedTarget(f"{host} resolves only to non-public addresses")
        return public

    async def close(self) -> None:
        await self._resolver.close()


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' ``webhook-signature`` value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def retry_wait(attempts: int, base_seconds: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, capped,
    with ±20% jitter so receivers coming back are not hit by every sender at once."""
    wait = min(base_seconds * 2 ** min(max(attempts - 1, 0), 30), MAX_WAIT_SECONDS)
    return wait * _jitter.uniform(0.8, 1.2)


class Deliverer:
    def __init__(self, engine: AsyncEngine, settings: Webhooks, metrics: Metrics) -> None:
        self.engine, self.settings, self.metrics = engine, settings, metrics
        resolver = None if settings.allow_private else _PublicOnly()
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=BATCH),
            timeout=aiohttp.ClientTimeout(total=settings.timeout_seconds),
            headers={"user-agent": "earmark-webhooks"},
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self.http.close()

    async def deliver_due(self) -> int:
        """Attempt every delivery due now (up to ``BATCH``); how many were attempted."""
        claimed = await self._claim()
        if claimed:
            outcomes = await asyncio.gather(*(self._attempt(row) for row in claimed))
            await self._record(claimed, outcomes)
        return len(claimed)

    async def _claim(self) -> list[Any]:
        now = database.utcnow()
        # Longer than an attempt can take: a delivery is taken again only if its process died.
        lease = timedelta(seconds=2 * self.settings.timeout_seconds + 1)
        d, e = webhook_deliveries, webhook_endpoints
        due = (
            select(d.c.id)
            .join(e, e.c.id == d.c.endpoint_id)
            .where(
                d.c.status == "pending",
                d.c.next_attempt_at <= now,
                e.c.enabled,
                e.c.deleted_at.is_(None),
            )
            .order_by(d.c.next_attempt_at)
            .limit(BATCH)
        )
        # A read first: a process with nothing due takes no write lock (SQLite has one).
        async with database.read(self.engine) as conn:
            if (await conn.execute(due.limit(1))).first() is None:
                return []
        async with database.write(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                due = due.with_for_update(of=d, skip_locked=True)
            ids = list((await conn.execute(due)).scalars())
            if not ids:
                return []
            await conn.execute(
                update(d)
                .where(d.c.id.in_(ids))
                .values(next_attempt_at=now + lease, attempts=d.c.attempts + 1)
            )
            query = (
                select(
                    d.c.id,
                    d.c.attempts,
                    d.c.endpoint_id,
                    webhook_events.c.id.label("event_id"),
                    webhook_events.c.payload,
                    webhook_events.c.created_at.label("event_at"),
                    e.c.url,
                    e.c.secret,
                )
                .join(webhook_events, webhook_events.c.id == d.c.event_id)
                .join(e, e.c.id == d.c.endpoint_id)
                .where(d.c.id.in_(ids))
            )
            return list((await conn.execute(query)).all())

    async def _attempt(self, row: Any) -> tuple[int | None, str | None]:
        """(the receiver's status, or None) and what went wrong, if anything."""
        body = msgspec.json.encode(row.payload)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": row.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(row.secret, row.event_id, timestamp, body),
        }
        try:
            host = urlsplit(row.url).hostname or ""
            literal = literal_address(host)
            if literal and not self.settings.allow_private and not is_public(literal):
                raise RefusedTarget(f"{host} is not a public address")
            async with self.http.post(
                row.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(_ANSWER_BYTES)
                if 200 <= response.status < 300:
                    return response.status, None
                return response.status, f"answered {response.status}"
        except RefusedTarget as refused:
            return None, f"refused: {refused}"
        except TimeoutError:
            return None, f"no answer within {self.settings.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as error:
            cause = error.__cause__ if isinstance(error.__cause__, RefusedTarget) else error
            return None, f"{type(cause).__name__}: {cause}"[:300]

    async def _record(
        self, claimed: list[Any], outcomes: list[tuple[int | None, str | None]]
    ) -> None:
        """Each attempt's outcome; then each endpoint's run of failures. Rows are locked
        deliveries first, then endpoints, each in id order, as ``delete_endpoint`` does:
        two processes recording at once never wait on each other in a cycle."""
        now = database.utcnow()
        give_up_after = timedelta(hours=self.settings.retry_hours)
        d, e = webhook_deliveries, webhook_endpoints
        failed: dict[str, bool] = {}  # endpoint id → its latest attempt here failed
        async with database.write(self.engine) as conn:
            for row, (status, error) in sorted(
                zip(claimed, outcomes, strict=True), key=lambda pair: pair[0].id
            ):
                values: dict[str, Any] = {
                    "last_attempt_at": now,
                    "last_status": status,
                    "last_error": error,
                }
                if error is None:
                    outcome = "succeeded"
                    values.update(status="succeeded", next_attempt_at=None)
                else:
                    wait = timedelta(
                        seconds=retry_wait(row.attempts, self.settings.retry_base_seconds)
                    )
                    if now + wait - row.event_at > give_up_after:
                        outcome = "failed"
                        values.update(status="failed", next_attempt_at=None)
                    else:
                        outcome = "retrying"
                        values.update(next_attempt_at=now + wait)
                # Only the attempt claimed last records: not one whose lease ran out and
                # that was claimed again (its attempts count moved on).
                await conn.execute(
                    update(d)
                    .where(d.c.id == row.id, d.c.status == "pending", d.c.attempts == row.attempts)
                    .values(**values)
                )
                failed[row.endpoint_id] = error is not None
                self.metrics.webhook_deliveries.labels(outcome).inc()
                if error is not None:
                    logger.warning(
                        "webhook %s to endpoint %s: %s (%s)",
                        row.event_id,
                        row.endpoint_id,
                        error,
                        outcome,
                    )
            for endpoint_id in sorted(failed):
                failures = e.c.consecutive_failures + 1 if failed[endpoint_id] else 0
                await conn.execute(
                    update(e).where(e.c.id == endpoint_id).values(consecutive_failures=failures)
                )


async def run_deliveries(deliverer: Deliverer) -> None:
    """Deliver what is due, then look again after ``poll_seconds`` (at once after a full
    batch); a failure of the database is logged and tried again at the next round."""
    while True:
        try:
            attempted = await deliverer.deliver_due()
        except Exception:  # the database went away: the deliveries wait in the outbox
            logger.exception("webhook deliveries could not be claimed or recorded")
            attempted = 0
        if attempted < BATCH:
            await asyncio.sleep(deliverer.settings.poll_seconds)


@contextlib.asynccontextmanager
async def delivering(engine: AsyncEngine, settings: Webhooks, metrics: Metrics) -> Any:
    """The process's delivery worker, for the lifespan."""
    deliverer = Deliverer(engine, settings, metrics)
    task = asyncio.create_task(run_deliveries(deliverer))
    try:
        yield deliverer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deliverer.close()
