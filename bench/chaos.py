"""Chaos: gateways killed, a database crashed, a provider that fails every way it can,
under load; then the ledger is checked against what the provider billed.

Three `earmark serve` processes share one database (SQLite, or a PostgreSQL cluster of
the run's own, on another port, crashed mid-run by an immediate stop and started again)
and one journal directory, in front of the fake provider answering with latency, 5xx,
resets during the upload and after the work, answers after the gateway's timeout and
broken-off streams, and logging every call it billed. Clients call without pause; every
few seconds a gateway is killed with SIGKILL and started again. At the end, once the
journal is replayed and the sweep has run, the invariants are printed:

- every attempt the provider billed is charged, or listed for review;
- every 200 a client saw is a settled row that was charged;
- spent + held never above a budget's cap at any sample (beyond flagged overruns);
- every budget counter equals its ledger rows; no row left open;
- no "nothing was sent" / "nothing was charged" where the provider had it.

    python -m bench.chaos [--database sqlite|postgres] [--seconds 120] [--clients 12]

The suite runs a short form (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from app.storage.database import create_engine
from app.storage.migrate import upgrade
from app.storage.models import budget_counters, budgets, ledger
from tests.conftest import ADMIN, ADMIN_TOKEN, ledger_invariants
from tests.fake_provider import API_KEY, Script, create_fake_provider
from tests.gateway import FIXTURES, KEY_ENV
from tests.processes import earmark_env, free_port
from tests.servers import ServerThread

PG_BIN = Path("/usr/lib/postgresql/15/bin")
FAULTS = [  # (probability, what the provider does) for each call it gets
    (0.06, {"status": 503}),
    (0.05, {"reset": "during_upload"}),
    (0.06, {"reset": "after_work"}),
    (0.06, {"delay": 1.6}),  # past the gateway's one-second timeout: still billed
    (0.05, {"break_stream_after": 3}),
]
CONFIG = """
[providers.openai]
base_url = "{fake}/v1"
api_key_env = "{key_env}"
timeout_seconds = 1
[providers.openai.models.whisper-1]
price = {{ per_audio_minute = "0.006" }}
[providers.openai.models.gpt-4o-transcribe]
price = {{ input_audio_per_million = "6.00", output_per_million = "10.00" }}
"""


class OwnPostgres:
    """A PostgreSQL cluster of this run's own (the shared server is never stopped)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.data = directory / "data"
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # initdb refuses to run as root: the cluster is postgres's
            directory.parent.chmod(0o755)
            shutil.chown(directory, "postgres")
        self._run(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        self.start()

    def _run(self, *command: object) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *map(str, command)], check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-o", options, "-l",
                  self.directory / "log", "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown; ``immediate``: a crash (what was committed without
        waiting for its WAL flush may be lost; the server recovers on the next start)."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")


@dataclass
class Run:
    database: str
    seconds: float
    clients: int
    seed: int
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[int, int, int]] = field(default_factory=list)  # spent, held, cap
    kills: int = 0
    database_outages: int = 0
    provider_log: list[dict[str, Any]] = field(default_factory=list)  # every request it got


class Gateways:
    """Three `earmark serve` processes; any may be killed and started again."""

    def __init__(self, env: dict[str, str], directory: Path, count: int = 3) -> None:
        self.env = env
        self.directory = directory
        self.ports = [free_port() for _ in range(count)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        for n in range(count):
            self.start(n)

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.ports[n]}"

    def start(self, n: int) -> None:
        with (self.directory / f"gateway-{n}.log").open("ab") as log:
            self.processes[n] = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(self.ports[n])],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url(n)}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway {n} did not start: see {self.directory}")

    def kill(self, n: int) -> None:
        process = self.processes[n]
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)


def _setup(url: str) -> dict[str, Any]:
    """A tenant, and a key whose budget runs out part way through the run."""
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as admin:
        tenant = admin.post("/admin/tenants", json={"name": "chaos"}).json()
        body = {
            "tenant_id": tenant["id"],
            "name": "chaos",
            "budgets": [{"limit_usd": "0.2", "period": "day"}],
        }
        return admin.post("/admin/keys", json=body).json()


async def _load(run: Run, gateways: Gateways, secret: str, until: float) -> None:
    audio = (FIXTURES / "speech.wav").read_bytes()
    rng = random.Random(run.seed)

    async def client(client: httpx.AsyncClient) -> None:
        while time.monotonic() < until:
            n = rng.randrange(len(gateways.ports))
            stream = rng.random() < 0.2
            model = "openai/gpt-4o-transcribe" if stream else "openai/whisper-1"
            data = {"model": model, "response_format": rng.choice(["json", "text"])}
            if stream:
                data = {"model": model, "stream": "true"}
            outcome: dict[str, Any] = {"status": 0, "request_id": None, "message": ""}
            try:
                async with client.stream(
                    "POST",
                    f"{gateways.url(n)}/v1/audio/transcriptions",
                    headers={"authorization": f"Bearer {secret}"},
                    data=data,
                    files={"file": ("speech.wav", audio, "audio/wav")},
                ) as response:
                    body = await response.aread()
                    outcome = {
                        "status": response.status_code,
                        "request_id": response.headers.get("x-request-id"),
                        "message": body[:600].decode("utf-8", "replace"),
                        "stream": stream,
                    }
            except httpx.HTTPError:
                pass  # the gateway was killed under us
            run.outcomes.append(outcome)

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(run.clients)))


async def _sample(run: Run, url: str, until: float) -> None:
    engine = create_engine(url)
    try:
        while time.monotonic() < until:
            try:
                async with engine.connect() as conn:
                    rows = (
                        await conn.execute(
                            select(
                                budget_counters.c.spent_nanos,
                                budget_counters.c.held_nanos,
                                budget_counters.c.top_up_nanos + budgets.c.limit_nanos,
                            ).join(budgets, budgets.c.id == budget_counters.c.budget_id)
                        )
                    ).all()
                run.samples.extend(tuple(row) for row in rows)
            except Exception:
                pass
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def _chaos(run: Run, gateways: Gateways, postgres: OwnPostgres | None, until: float) -> None:
    rng = random.Random(run.seed + 1)
    outage_at = time.monotonic() + (until - time.monotonic()) / 3
    while time.monotonic() < until - 3:
        await asyncio.sleep(rng.uniform(2, 4))
        n = rng.randrange(len(gateways.ports))
        await asyncio.to_thread(gateways.kill, n)
        run.kills += 1
        await asyncio.to_thread(gateways.start, n)
        if postgres is not None and time.monotonic() > outage_at and not run.database_outages:
            await asyncio.to_thread(postgres.stop, "immediate")
            run.database_outages += 1
            await asyncio.sleep(3)
            await asyncio.to_thread(postgres.start)


async def _settled(url: str, seconds: float) -> None:
    """Until no ledger row is open: the gateways replay the journal and sweep."""
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                open_rows = (
                    await conn.execute(
                        select(ledger.c.id).where(ledger.c.status.in_(("reserved", "forwarded")))
                    )
                ).all()
            if not open_rows:
                return
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


async def _rows(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return {row.id: row for row in (await conn.execute(select(ledger))).all()}
    finally:
        await engine.dispose()


def check(run: Run, rows: dict[str, Any], billed: list[dict[str, Any]]) -> list[str]:
    """The invariants; each violation as a sentence."""
    violations = []
    for record in billed:
        call_id = record["headers"].get("x-client-request-id")
        row = rows.get(call_id)
        if row is None:
            violations.append(f"the provider billed {call_id}, which has no ledger row")
        elif row.cost_nanos == 0 and row.review is None:
            violations.append(
                f"the provider billed {call_id}; it was charged nothing ({row.status})"
            )
    for outcome in run.outcomes:
        row = rows.get(outcome["request_id"])
        if outcome["status"] == 200:
            if row is None or row.status not in ("succeeded", "interrupted"):
                violations.append(f"a 200 for {outcome['request_id']} is not a settled row")
            elif row.cost_nanos == 0:
                violations.append(f"a 200 for {outcome['request_id']} was charged nothing")
    sent = {r["headers"].get("x-client-request-id") for r in billed}
    reached = {
        r["headers"].get("x-client-request-id")
        for r in run.provider_log
        if r.get("reset") != "during_upload"
    }
    for outcome in run.outcomes:
        message = outcome["message"]
        if "nothing was sent upstream" in message and outcome["request_id"] in reached:
            violations.append(f"{outcome['request_id']} said nothing was sent, but it was")
        if "nothing was charged" in message and outcome["request_id"] in sent:
            violations.append(f"{outcome['request_id']} said nothing was charged; it was billed")
    overrun = sum(max(0, row.cost_nanos - row.hold_nanos) for row in rows.values())
    for spent, held, cap in run.samples:
        if spent + held > cap + overrun:
            violations.append(f"spent {spent} + held {held} above the cap {cap}")
            break
    still_open = [r.id for r in rows.values() if r.status in ("reserved", "forwarded")]
    if still_open:
        violations.append(f"{len(still_open)} rows still open after the sweep")
    return violations


async def _finish(run: Run, url: str, fake: ServerThread) -> dict[str, Any]:
    await _settled(url, 60)
    rows = await _rows(url)
    run.provider_log = list(fake.script.requests)  # type: ignore[attr-defined]
    billed = [r for r in run.provider_log if "billed_seconds" in r]
    violations = check(run, rows, billed)
    try:
        await ledger_invariants(url)
    except AssertionError as error:
        violations.append(f"a budget counter differs from its ledger rows: {error}")
    statuses: dict[int, int] = {}
    for outcome in run.outcomes:
        statuses[outcome["status"]] = statuses.get(outcome["status"], 0) + 1
    return {
        "database": run.database,
        "calls": len(run.outcomes),
        "statuses": dict(sorted(statuses.items())),
        "provider_billed": len(billed),
        "ledger_rows": len(rows),
        "for_review": sum(1 for row in rows.values() if row.review),
        "charged_usd": str(Decimal(sum(r.cost_nanos for r in rows.values())).scaleb(-9)),
        "kills": run.kills,
        "database_outages": run.database_outages,
        "budget_samples": len(run.samples),
        "violations": violations,
    }


@contextmanager
def _database(kind: str, directory: Path):
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'earmark.db'}", None
        return
    postgres = OwnPostgres(directory / "postgres")
    try:
        yield postgres.url, postgres
    finally:
        postgres.stop()


def run(database: str = "sqlite", seconds: float = 60, clients: int = 12, seed: int = 0) -> dict:
    """One chaos run; returns the report (``violations`` empty when every invariant held)."""
    chaos_run = Run(database=database, seconds=seconds, clients=clients, seed=seed)
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="earmark-chaos-")))
        url, postgres = stack.enter_context(_database(database, directory))
        upgrade(url)
        script = Script()
        script.chaos = list(FAULTS)
        script.random = random.Random(seed)
        script.latency = 0.15
        fake = stack.enter_context(
            ServerThread(create_fake_provider(script), "tests.servers:ResettableProtocol")
        )
        fake.script = script  # type: ignore[attr-defined]
        config = directory / "earmark.toml"
        config.write_text(CONFIG.format(fake=fake.url, key_env=KEY_ENV))
        env = earmark_env(
            url,
            EARMARK_ADMIN_TOKEN=ADMIN_TOKEN,
            EARMARK_CONFIG=str(config),
            EARMARK_JOURNAL_DIR=str(directory / "journal"),
            EARMARK_SWEEP_INTERVAL="1",
            EARMARK_SWEEP_RESERVED_AFTER="3",
            EARMARK_SWEEP_FORWARDED_MARGIN="3",
            **{KEY_ENV: API_KEY},
        )
        gateways = Gateways(env, directory)
        stack.callback(gateways.stop)
        key = _setup(gateways.url(0))

        async def main() -> dict[str, Any]:
            until = time.monotonic() + seconds
            await asyncio.gather(
                _load(chaos_run, gateways, key["secret"], until),
                _sample(chaos_run, url, until),
                _chaos(chaos_run, gateways, postgres, until),
            )
            return await _finish(chaos_run, url, fake)

        return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(args.database, args.seconds, args.clients, args.seed)
    print(json.dumps(report, indent=2))
    sys.exit(1 if report["violations"] else 0)


if __name__ == "__main__":
    main()
