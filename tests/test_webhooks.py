"""Webhooks: admin changes reach the endpoints that want them, signed as Standard Webhooks
say (verified here by the `standardwebhooks` library, as a receiver would), at least once
through failures and downtime, never for a change that rolled back, never to a private
address unless allowed; deliveries are listed and can be sent again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from app.access import keys, tenants
from app.billing import budgets
from app.ops import webhooks
from app.ops.audit import Actor
from app.ops.metrics import Metrics
from app.ops.webhook_delivery import BATCH, Deliverer, _PublicOnly
from app.ops.webhook_targets import RefusedTarget
from app.schemas import BudgetCreate, KeyCreate, KeyUpdate, TenantCreate, WebhookCreate
from app.settings import Webhooks
from app.storage import database
from app.storage.models import budget_counters, webhook_deliveries, webhook_events
from tests.conftest import ADMIN
from tests.gateway import burst, process_env, scrape, serve_gateway, total
from tests.processes import (
    children_named,
    earmark_env,
    free_port,
    run_cli,
    serving,
    serving_many,
)

ACTOR = Actor("test")
FAST = Webhooks(allow_private=True, poll_seconds=0.05, retry_base_seconds=0.05, timeout_seconds=2)
ALL_TYPES = ["key.created", "key.revoked", "key.rotated", "tenant.deactivated"]


class Receiver:
    """A webhook receiver on loopback: verifies each delivery's signature, records it, and
    answers ``failures`` 500s first (or is not listening until ``start``)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.secret: str | None = None
        self.received: list[dict[str, Any]] = []  # verified deliveries, in arrival order
        self.unverified = 0
        self.failures = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    payload = Webhook(receiver.secret).verify(body, dict(self.headers))
                except Exception:
                    receiver.unverified += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                if receiver.failures:
                    receiver.failures -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append({"id": self.headers["webhook-id"], **payload})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def hooked(database_url, fake_provider, tmp_path, monkeypatch) -> Iterator[Any]:
    """A gateway that delivers to loopback receivers, promptly."""
    from tests.fake_provider import API_KEY
    from tests.gateway import KEY_ENV

    monkeypatch.setenv(KEY_ENV, API_KEY)
    with serve_gateway(database_url, fake_provider.url, tmp_path, webhooks=FAST) as gateway:
        yield gateway


def _eventually(check: Callable[[], Any], seconds: float = 15) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _register(gateway: Any, receiver: Receiver, **body: Any) -> dict[str, Any]:
    endpoint = gateway.admin(
        "POST", "/admin/webhooks", json={"url": receiver.url, "event_types": ALL_TYPES, **body}
    )
    receiver.secret = endpoint["secret"]
    return endpoint


def test_admin_changes_reach_the_endpoints_that_want_them_signed(hooked, receiver):
    receiver.start()
    acme = hooked.admin("POST", "/admin/tenants", json={"name": "acme"})
    other = hooked.admin("POST", "/admin/tenants", json={"name": "other"})
    endpoint = _register(hooked, receiver)
    assert endpoint["secret"].startswith("whsec_") and endpoint["failing"] is False
    assert "secret" not in hooked.admin("GET", f"/admin/webhooks/{endpoint['id']}")
    # Another tenant's only, and a disabled one: neither hears about acme.
    quiet = Receiver().start()
    try:
        _register(hooked, quiet, tenant_id=other["id"])
        _register(hooked, quiet, enabled=False)
        quiet.secret = None
        key = hooked.admin("POST", "/admin/keys", json={"tenant_id": acme["id"], "name": "k"})
        rotated = hooked.admin(
            "POST", f"/admin/keys/{key['id']}/rotate", json={"grace_seconds": 60}
        )
        hooked.admin("POST", f"/admin/keys/{key['id']}/revoke")
        hooked.admin("POST", f"/admin/keys/{key['id']}/revoke")  # already revoked: no event
        hooked.admin("DELETE", f"/admin/tenants/{acme['id']}")
        got = _eventually(lambda: len(receiver.received) >= 4 and receiver.received)
        time.sleep(0.3)  # time for anything that should not come
        assert quiet.received == [] and quiet.unverified == 0
    finally:
        quiet.stop()
    assert receiver.unverified == 0
    assert [event["type"] for event in sorted(got, key=lambda e: e["id"])] == [
        "key.created",
        "key.rotated",
        "key.revoked",
        "tenant.deactivated",
    ]
    assert len(got) == 4
    by_type = {event["type"]: event for event in got}
    assert by_type["key.created"]["data"]["key"]["id"] == key["id"]
    assert by_type["key.revoked"]["data"]["key"]["status"] == "revoked"
    assert by_type["key.rotated"]["data"]["previous_secret_valid_until"].endswith("Z")
    assert by_type["tenant.deactivated"]["data"]["tenant"]["status"] == "inactive"
    assert key["secret"] not in json.dumps(got) and rotated["secret"] not in json.dumps(got)

    deliveries = hooked.admin("GET", f"/admin/webhooks/{endpoint['id']}/deliveries")["data"]
    assert sorted(d["event_type"] for d in deliveries) == sorted(by_type)
    assert {(d["status"], d["attempts"], d["last_status"]) for d in deliveries} == {
        ("succeeded", 1, 204)
    }
    # Sent again on request: the same event, the same webhook-id.
    again = hooked.admin(
        "POST", f"/admin/webhooks/{endpoint['id']}/deliveries/{deliveries[0]['id']}/redeliver"
    )
    assert again["status"] == "pending"
    _eventually(lambda: len(receiver.received) == 5)
    assert receiver.received[-1]["id"] == deliveries[0]["event_id"]
    actions = [e["action"] for e in hooked.admin("GET", "/admin/audit")["data"]]
    assert "webhook.create" in actions and "webhook.redeliver" in actions
    assert endpoint["secret"] not in json.dumps(hooked.admin("GET", "/admin/audit")["data"])


def test_a_receiver_down_then_failing_gets_every_event_once_back(hooked):
    receiver = Receiver()  # not listening yet
    endpoint = _register(hooked, receiver)
    acme = hooked.admin("POST", "/admin/tenants", json={"name": "acme"})
    made = [
        hooked.admin("POST", "/admin/keys", json={"tenant_id": acme["id"], "name": f"k{n}"})
        for n in range(3)
    ]
    url = f"/admin/webhooks/{endpoint['id']}/deliveries"

    def retried() -> bool:
        found = hooked.admin("GET", url)["data"]
        return len(found) == 3 and all(d["attempts"] >= 2 and d["last_error"] for d in found)

    assert _eventually(retried)
    shown = f"/admin/webhooks/{endpoint['id']}"
    assert _eventually(lambda: hooked.admin("GET", shown)["failing"])  # 5 failures in a row
    receiver.failures = 2  # back, but answering 500 twice more
    receiver.start()
    try:
        assert _eventually(lambda: len(receiver.received) == 3)
        time.sleep(0.3)
        assert sorted(e["data"]["key"]["id"] for e in receiver.received) == sorted(
            k["id"] for k in made
        )
        assert len({e["id"] for e in receiver.received}) == 3
        deliveries = hooked.admin("GET", url)["data"]
        assert {d["status"] for d in deliveries} == {"succeeded"}
        assert hooked.admin("GET", shown)["failing"] is False
        samples = scrape(hooked.url)
        assert total(samples, "earmark_webhook_deliveries_total", outcome="succeeded") == 3
        assert total(samples, "earmark_webhook_deliveries_total", outcome="retrying") >= 8
    finally:
        receiver.stop()


def test_private_addresses_are_refused_unless_allowed(gateway):
    for url in (
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "http://[2002:a9fe:a9fe::]/hook",  # 6to4 of it
        "http://[::127.0.0.1]/hook",  # IPv4-compatible
        "http://[fec0::1]/hook",  # site-local
    ):
        answer = gateway.http.post(
            "/admin/webhooks", json={"url": url, "event_types": ALL_TYPES}, headers=ADMIN
        )
        assert answer.status_code == 400, (url, answer.text)
        assert answer.json()["error"]["code"] == "webhook_url_private", url
    for url in (
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http://",
        "http://[not-an-address/x",
        "http://host:99999/x",
        "http://a\x00b/x",
        "http://" + "a" * 64 + ".example/x",
        "http://user:secret@93.184.215.14/x",  # credentials belong in the path, if anywhere
    ):
        answer = gateway.http.post(
            "/admin/webhooks", json={"url": url, "event_types": ALL_TYPES}, headers=ADMIN
        )
        assert answer.status_code == 400, (url, answer.text)
    public = gateway.admin(
        "POST", "/admin/webhooks", json={"url": "https://93.184.215.14/h", "event_types": ALL_TYPES}
    )
    moved = gateway.http.patch(
        f"/admin/webhooks/{public['id']}", json={"url": "http://127.0.0.1/h"}, headers=ADMIN
    )
    assert moved.status_code == 400
    unknown = gateway.http.post(
        "/admin/webhooks",
        json={"url": "https://93.184.215.14/h", "event_types": ["x"]},
        headers=ADMIN,
    )
    assert unknown.status_code == 400


def test_a_name_resolving_to_a_private_address_is_refused_when_connecting():
    async def resolve() -> None:
        resolver = _PublicOnly()
        try:
            with pytest.raises(RefusedTarget):
                await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    asyncio.run(resolve())


@pytest.mark.anyio
async def test_nothing_is_queued_for_a_change_that_rolls_back(engine, monkeypatch):
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    key = await keys.create_key(engine, "", KeyCreate(tenant_id=tenant.id, name="k"), ACTOR)
    await webhooks.create_endpoint(
        engine,
        WebhookCreate(url="http://127.0.0.1:9/h", event_types=["key.revoked"]),
        ACTOR,
        allow_private=True,
    )
    emit = webhooks.emit

    async def emit_then_fail(*args: Any) -> None:
        await emit(*args)
        raise RuntimeError("the change fails after its event was queued")

    monkeypatch.setattr(webhooks, "emit", emit_then_fail)
    with pytest.raises(RuntimeError):
        await keys.revoke_key(engine, key.id, ACTOR)
    assert (await keys.get_key(engine, key.id)).status == "active"
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(webhook_events)) == 0
        assert await conn.scalar(select(func.count()).select_from(webhook_deliveries)) == 0


@pytest.mark.anyio
async def test_processes_never_take_the_same_delivery_and_a_dead_ones_is_taken_later(engine):
    """Two processes claiming at once split the due deliveries; one a process claimed and
    never recorded (it died) is taken again once its lease ends, by another process."""
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    endpoint = await webhooks.create_endpoint(
        engine,
        WebhookCreate(url="http://127.0.0.1:9/h", event_types=["key.created"]),
        ACTOR,
        allow_private=True,
    )
    for n in range(BATCH + 5):
        await keys.create_key(engine, "", KeyCreate(tenant_id=tenant.id, name=f"k{n}"), ACTOR)
    settings = Webhooks(allow_private=True, timeout_seconds=0.5)
    first, second = Deliverer(engine, settings, Metrics()), Deliverer(engine, settings, Metrics())
    try:
        a, b = await asyncio.gather(first._claim(), second._claim())
        ids_a, ids_b = {row.id for row in a}, {row.id for row in b}
        assert not ids_a & ids_b and len(ids_a | ids_b) == BATCH + 5
        assert await first._claim() == []  # all leased
        await asyncio.sleep(2.1)  # the lease: twice the attempt's timeout, and a second
        again = await second._claim() + await second._claim()  # a batch at a time
        assert {row.id for row in again} == ids_a | ids_b
        assert {row.attempts for row in again} == {2}
        # The first attempts end late: what they say is not recorded over the second's.
        await first._record(a, [(204, None)] * len(a))
        deliveries = await webhooks.list_deliveries(engine, endpoint.id, limit=50, cursor=None)
        assert {d.status for d in deliveries.data} == {"pending"}
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_a_private_target_is_refused_at_delivery_too(engine):
    """Registered while private targets were allowed, delivered by a process where they
    are not: refused, recorded, retried later, never connected to."""
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    endpoint = await webhooks.create_endpoint(
        engine,
        WebhookCreate(url="http://127.0.0.1:9/h", event_types=["key.created"]),
        ACTOR,
        allow_private=True,
    )
    await keys.create_key(engine, "", KeyCreate(tenant_id=tenant.id, name="k"), ACTOR)
    deliverer = Deliverer(engine, Webhooks(), Metrics())
    try:
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.close()
    (delivery,) = (await webhooks.list_deliveries(engine, endpoint.id, limit=5, cursor=None)).data
    assert delivery.status == "pending" and delivery.last_status is None
    assert delivery.last_error is not None and delivery.last_error.startswith("refused")


def test_the_cli_manages_endpoints_and_their_deliveries(sqlite_url):
    database_url = sqlite_url
    env = {**earmark_env(database_url), "EARMARK_WEBHOOKS_ALLOW_PRIVATE": "true"}

    def cli(*args: str) -> Any:
        result = run_cli(env, *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    made = cli("webhooks", "create", "http://127.0.0.1:9/h", "--event", "key.created")
    assert made["secret"].startswith("whsec_") and made["event_types"] == ["key.created"]
    changed = cli(
        "webhooks",
        "update",
        made["id"],
        "--event",
        "key.revoked",
        "--event",
        "key.rotated",
        "--disable",
    )
    assert changed["event_types"] == ["key.revoked", "key.rotated"] and not changed["enabled"]
    assert cli("webhooks", "rotate-secret", made["id"])["secret"] != made["secret"]
    assert [w["id"] for w in cli("webhooks", "list")["data"]] == [made["id"]]
    assert cli("webhooks", "deliveries", made["id"])["data"] == []
    table = run_cli(env, "webhooks", "create", "http://127.0.0.1:9/h", "--event", "key.revoked")
    assert table.returncode == 0 and "whsec_" in table.stdout and "only" in table.stderr
    clash = run_cli(env, "webhooks", "update", made["id"], "--enable", "--disable")
    assert clash.returncode != 0 and "contradict" in clash.stderr
    assert run_cli(env, "webhooks", "delete", made["id"]).returncode == 0
    refused = run_cli(
        earmark_env(database_url),
        "webhooks",
        "create",
        "http://10.1.2.3/",
        "--event",
        "key.created",
    )
    assert refused.returncode != 0 and "EARMARK_WEBHOOKS_ALLOW_PRIVATE" in refused.stderr
    actions = [e["action"] for e in cli("audit", "--all")["data"]]
    assert actions.count("webhook.create") == 2 and "webhook.delete" in actions


def test_a_budget_announces_each_threshold_once_and_its_first_refusal(hooked, receiver):
    """speech.wav costs $0.0006: with a $0.0020 limit, the first call reaches 25%, the
    second 50%, the third 90% (no threshold), the fourth cannot fit: a 402, announced
    once however many follow."""
    receiver.start()
    _register(hooked, receiver, event_types=["budget.threshold", "budget.exhausted"])
    tenant = hooked.admin("POST", "/admin/tenants", json={"name": "acme"})
    budget = {"limit_usd": "0.0020", "period": "month", "thresholds": [50, 25, 100]}
    key = hooked.admin(
        "POST", "/admin/keys", json={"tenant_id": tenant["id"], "name": "k", "budgets": [budget]}
    )
    assert key["budgets"][0]["thresholds"] == [25, 50, 100]
    statuses = [hooked.post_audio(key, "openai/whisper-1").status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 402, 402, 402]
    got = _eventually(lambda: len(receiver.received) >= 3 and receiver.received)
    time.sleep(0.3)
    assert len(receiver.received) == 3
    announced = sorted(got, key=lambda event: event["id"])
    assert [(e["type"], e["data"].get("threshold_percent")) for e in announced] == [
        ("budget.threshold", 25),
        ("budget.threshold", 50),
        ("budget.exhausted", None),
    ]
    first, _, exhausted = (event["data"]["budget"] for event in announced)
    assert first["id"] == key["budgets"][0]["id"] and first["tenant_id"] == tenant["id"]
    assert (first["spent_usd"], first["limit_usd"]) == ("0.000600000", "0.002000000")
    assert exhausted["spent_usd"] == "0.001800000" and exhausted["owner"] == "key"
    # A top-up gives room again: the next exhaustion is news.
    url = f"/admin/budgets/{first['id']}/top-up"
    hooked.admin("POST", url, json={"amount_usd": "0.0020"})
    statuses = [hooked.post_audio(key, "openai/whisper-1").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 402, 402]  # $0.0036 of $0.0040
    assert _eventually(lambda: len(receiver.received) == 4)
    time.sleep(0.3)
    assert [e["type"] for e in receiver.received[3:]] == ["budget.exhausted"]


def test_a_threshold_crossed_by_concurrent_calls_is_announced_once(hooked, receiver):
    """Twenty calls at once on a budget that fits them all: 10% is crossed by the second
    to settle and 50% by the tenth, whichever they are: one event each."""
    receiver.start()
    _register(hooked, receiver, event_types=["budget.threshold"])
    tenant = hooked.admin("POST", "/admin/tenants", json={"name": "acme"})
    hooked.admin(
        "POST",
        f"/admin/tenants/{tenant['id']}/budgets",
        json={"limit_usd": "0.0120", "period": "day", "thresholds": [10, 50]},
    )
    key = hooked.admin("POST", "/admin/keys", json={"tenant_id": tenant["id"], "name": "k"})
    with ThreadPoolExecutor(20) as pool:
        statuses = list(
            pool.map(lambda _: hooked.post_audio(key, "openai/whisper-1").status_code, range(20))
        )
    assert statuses == [200] * 20  # the budget fits them all, holds included
    assert _eventually(lambda: len(receiver.received) >= 2)
    time.sleep(0.3)
    assert sorted(e["data"]["threshold_percent"] for e in receiver.received) == [10, 50]


def test_a_call_charged_for_review_is_announced(hooked, receiver):
    """The provider did the work and reset the connection: the call is charged its
    expected cost for review, and call.review says so, with its settle."""
    receiver.start()
    _register(hooked, receiver, event_types=["call.review"])
    key = hooked.new_key()
    hooked.script({"reset": "after_work"})
    assert hooked.post_audio(key, "openai/whisper-1").status_code == 502
    assert hooked.post_audio(key, "openai/whisper-1").status_code == 200  # not for review
    (event,) = _eventually(lambda: receiver.received)
    time.sleep(0.3)
    assert len(receiver.received) == 1
    call = event["data"]["call"]
    assert (call["review"], call["cost_usd"], call["key_id"]) == (
        "uncertain",
        "0.000600000",
        key["id"],
    )
    assert call["id"] == hooked.calls(key)[-1]["id"]


@pytest.mark.anyio
async def test_an_expired_key_is_announced_once(engine):
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    await webhooks.create_endpoint(
        engine,
        WebhookCreate(url="http://127.0.0.1:9/h", event_types=["key.expired"]),
        ACTOR,
        allow_private=True,
    )
    soon = database.utcnow() + timedelta(seconds=1)
    key = await keys.create_key(
        engine, "", KeyCreate(tenant_id=tenant.id, name="k", expires_at=soon), ACTOR
    )
    assert await keys.announce_expired(engine) == 0
    await asyncio.sleep(1.1)
    assert [await keys.announce_expired(engine) for _ in range(2)] == [1, 0]
    later = database.utcnow() + timedelta(days=1)
    await keys.update_key(engine, key.id, KeyUpdate(expires_at=later), ACTOR)
    assert await keys.announce_expired(engine) == 0  # its new expiry is ahead
    async with engine.connect() as conn:
        events = (await conn.execute(select(webhook_events.c.type, webhook_events.c.payload))).all()
    assert [(event.type, event.payload["data"]["key"]["id"]) for event in events] == [
        ("key.expired", key.id)
    ]


def _process_env(database_url: str, fake_url: str, directory: Any) -> dict[str, str]:
    return {
        **process_env(database_url, fake_url, directory),
        "EARMARK_WEBHOOKS_ALLOW_PRIVATE": "true",
        "EARMARK_WEBHOOKS_POLL_INTERVAL": "0.05",
        "EARMARK_WEBHOOKS_RETRY_BASE": "0.05",
        "EARMARK_WEBHOOKS_TIMEOUT": "1",
    }


def test_thresholds_crossed_by_200_calls_on_several_processes_are_announced_once(
    hooked, receiver, database_url, tmp_path
):
    """4 gateway processes on PostgreSQL (2 on one SQLite file), 200 calls at once on a
    budget that fits 40: each threshold once, one exhaustion, whichever process settles
    or refuses the call that crosses it, and whichever delivers it."""
    receiver.start()
    _register(hooked, receiver, event_types=["budget.threshold", "budget.exhausted"])
    budget = {"limit_usd": "0.0240", "period": "day", "thresholds": [10, 50, 90]}
    key = hooked.new_key(budgets=[budget])
    processes = 4 if database_url.startswith("postgresql") else 2
    env = _process_env(database_url, hooked.fake, tmp_path)
    with serving_many(env, tmp_path, processes) as urls:
        statuses = [r.status_code for r in asyncio.run(burst(urls, key["secret"], 200))]
        # Refused while calls held the rest (429 budget_busy); spent, it is a 402.
        later = [r.status_code for r in asyncio.run(burst(urls, key["secret"], 8))]
        assert _eventually(lambda: len(receiver.received) >= 4, seconds=30)
        time.sleep(0.5)
    assert statuses.count(200) == 40, statuses
    assert later == [402] * 8
    announced = sorted(
        (event["type"], event["data"].get("threshold_percent")) for event in receiver.received
    )
    assert announced == [
        ("budget.exhausted", None),
        ("budget.threshold", 10),
        ("budget.threshold", 50),
        ("budget.threshold", 90),
    ]


def test_a_gateway_killed_before_delivering_loses_nothing(database_url, fake_provider, tmp_path):
    """The revocation is committed with its event; the process that would deliver it is
    killed (-9) while the receiver is down; another process delivers it once it is up."""
    receiver = Receiver()
    env = _process_env(database_url, fake_provider.url, tmp_path)
    try:
        with serving(env, tmp_path / "first.log") as first:
            admin = httpx.Client(base_url=first, headers=ADMIN, timeout=10)
            tenant = admin.post("/admin/tenants", json={"name": "acme"}).json()
            key = admin.post("/admin/keys", json={"tenant_id": tenant["id"], "name": "k"}).json()
            endpoint = admin.post(
                "/admin/webhooks", json={"url": receiver.url, "event_types": ["key.revoked"]}
            ).json()
            receiver.secret = endpoint["secret"]
            assert admin.post(f"/admin/keys/{key['id']}/revoke").status_code == 200
            url = f"/admin/webhooks/{endpoint['id']}/deliveries"
            assert _eventually(lambda: admin.get(url).json()["data"][0]["attempts"] >= 2)
            admin.close()
            (pid,) = children_named(os.getpid(), first.rsplit(":", 1)[1].encode())
            os.kill(pid, signal.SIGKILL)
        receiver.start()
        with serving(env, tmp_path / "second.log"):
            got = _eventually(lambda: receiver.received, seconds=15)
        assert [event["type"] for event in got] == ["key.revoked"]
        assert got[0]["data"]["key"]["id"] == key["id"]
    finally:
        receiver.stop()


@pytest.mark.anyio
async def test_a_reset_re_arms_the_periods_alerts(engine):
    """A period that announced its thresholds and its exhaustion starts again from none
    once its spend is reset (here on a counter no call charged: spend 0, announced all)."""
    tenant = await tenants.create_tenant(engine, TenantCreate(name="t"), ACTOR)
    budget = await budgets.create_budget(
        engine,
        BudgetCreate(limit_usd="1", period="day", thresholds=[50]),
        ACTOR,
        tenant_id=tenant.id,
    )
    async with database.write(engine) as conn:
        await conn.execute(
            budget_counters.insert().values(
                budget_id=budget.id,
                period_start=budget.period_start,
                spent_nanos=0,
                held_nanos=0,
                top_up_nanos=0,
                alerted_percent=50,
                exhausted_alerted=True,
            )
        )
    await budgets.reset(engine, budget.id, ACTOR)
    async with engine.connect() as conn:
        counter = (await conn.execute(select(budget_counters))).one()
    assert (counter.alerted_percent, counter.exhausted_alerted) == (0, False)
