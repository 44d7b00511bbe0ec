"""Earmark's overhead on top of the provider, against the bare pass-through baseline.

Starts a fast fake provider, the pass-through baseline and `earmark serve` (one worker,
full metering: a key budget and a tenant budget on the path, metrics on) as separate
processes on loopback, then measures in one run, with a raw-socket load generator
(``bench/load.py``) so the client is not what is measured:

1. added latency (p50/p95) over calling the provider directly, for 100 KB and 1 MB WAV
   uploads, sequentially, the three targets interleaved so noise hits them alike;
2. requests/s (and p50/p99) at 16 concurrent clients for 100 KB uploads, and each
   server's CPU time per call (steadier than requests/s on a busy machine), and on
   PostgreSQL its backends' CPU time per Earmark call (they share this machine's cores);
3. Earmark's peak RSS while 32 clients upload 25 MiB each at once.

    python -m bench.gateway_overhead [--requests 300] [--seconds 10]
        [--database-url URL | --postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
        [--ledger-rows 300000]
        [--profile stacks.txt]

``--profile`` samples Earmark with py-spy (``pip install py-spy``) during the throughput
run: collapsed stacks to the file (flamegraph input), the functions with the most
samples printed. The sampling costs the run a fifth or so of its requests/s.

Figures are machine-dependent; compare ratios taken from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import uvloop
from sqlalchemy import text

from app.storage.database import create_engine
from bench import load
from bench.ledger_scale import fill_ledger
from bench.reservation import drop, postgres_database
from tests.processes import earmark_env, free_port, wav_of_size

HERE = Path(__file__).resolve().parent.parent  # the checkout this bench runs from
ADMIN_TOKEN = "bench-admin-token-0123456789"
BOUNDARY = "earmarkbenchboundary"
FORM = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(audio: bytes, model: str) -> bytes:
    """Encoded once, so the load generator spends its time sending, not encoding."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


def speech_wav(size: int) -> bytes:
    """A 16 kHz mono WAV of ``size`` bytes whose samples are the speech fixture's, repeated:
    real audio, so the measure takes the path a real upload takes (not silence's)."""
    fixture = (HERE / "tests" / "fixtures" / "speech.wav").read_bytes()
    samples = fixture[fixture.index(b"data") + 8 :]
    header = wav_of_size(44)
    pcm = (samples * (size // len(samples) + 1))[: size - 44]
    return (
        header[:4]
        + (size - 8).to_bytes(4, "little")
        + header[8:40]
        + (size - 44).to_bytes(4, "little")
        + pcm
    )


def earmark_setup(work: Path, provider: str, database_url: str) -> dict[str, str]:
    """Write ``earmark.toml`` (one model on ``provider``) into ``work``; the environment
    `earmark serve` runs with."""
    (work / "earmark.toml").write_text(
        f'[providers.fast]\nbase_url = "{provider}/v1"\napi_key_env = "BENCH_PROVIDER_KEY"\n'
        '[providers.fast.models.whisper-1]\nprice = { per_audio_minute = "0.006" }\n'
    )
    return earmark_env(
        database_url,
        EARMARK_ADMIN_TOKEN=ADMIN_TOKEN,
        EARMARK_CONFIG=str(work / "earmark.toml"),
        BENCH_PROVIDER_KEY="sk-bench",
    )


def fresh_database(
    stack: ExitStack, work: Path, name: str, postgres: str | None, checkout: Path = HERE
) -> str:
    """A migrated database for one server: a new SQLite file in ``work``, or with
    ``postgres`` a new database on that PostgreSQL server, dropped when ``stack`` closes,
    migrated by ``checkout``'s migrations (another version's schema may differ)."""
    if not postgres:
        return f"sqlite+aiosqlite:///{work / name}.db"
    database, url = asyncio.run(postgres_database(postgres))
    stack.callback(asyncio.run, drop(postgres, database))
    migrate = "import sys; from app.storage.migrate import upgrade; upgrade(sys.argv[1])"
    subprocess.run([sys.executable, "-c", migrate, url], cwd=checkout, check=True)
    return url


def fast_provider(stack: ExitStack, work: Path) -> str:
    """The fake provider, answering at once, started and stopped with ``stack``: its URL."""
    port = free_port()
    process = start(
        [sys.executable, "-m", "bench.upstreams", "provider", str(port)],
        {**os.environ, "PYTHONPATH": str(HERE)},
        work / "provider.log",
    )
    stack.callback(process.wait, 15)
    stack.callback(process.terminate)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, work / "provider.log")
    return url


def metered_request(earmark: str, body: bytes) -> tuple[str, bytes]:
    """An upload of ``body`` with a new ``metered_key``, encoded once: (URL, request)."""
    target = f"{earmark}/v1/audio/transcriptions"
    headers = {**FORM, "authorization": f"Bearer {metered_key(earmark)['secret']}"}
    return target, load.request_bytes(target, headers, body)


def serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "app", "serve", "--port", str(port), "--log-level", "warning"]


def metered_key(earmark: str) -> dict[str, str]:
    """A new tenant's key with a budget of its own and one of its tenant's on its path, as
    the admin API returns it (``secret``, ``id``, ``tenant_id``)."""
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    tenant = httpx.post(f"{earmark}/admin/tenants", json={"name": "bench"}, headers=admin)
    tenant_id = tenant.raise_for_status().json()["id"]
    key = httpx.post(
        f"{earmark}/admin/keys",
        json={
            "tenant_id": tenant_id,
            "name": "bench",
            "budgets": [{"limit_usd": "1000000", "period": "month"}],
        },
        headers=admin,
    )
    httpx.post(
        f"{earmark}/admin/tenants/{tenant_id}/budgets",
        json={"limit_usd": "1000000", "period": "month"},
        headers=admin,
    ).raise_for_status()
    return key.raise_for_status().json()


def start(
    args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited:\n{log.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start:\n{log.read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends_cpu(database_url: str) -> dict[int, float]:
    """The CPU each PostgreSQL backend serving ``database_url`` (on this machine) has used,
    by process id."""

    async def backends() -> list[int]:
        engine = create_engine(database_url)
        async with engine.connect() as conn:
            pids = await conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await engine.dispose()
        return list(pids.scalars())

    cpu = {}
    for pid in asyncio.run(backends()):
        with contextlib.suppress(OSError):
            cpu[pid] = cpu_seconds(pid)
    return cpu


def throughput(
    server_pid: int,
    url: str,
    request: bytes,
    clients: int,
    seconds: float,
    database_url: str | None = None,
) -> dict[str, float]:
    """``load.concurrent``'s figures, and the server's own CPU per call (ms): steadier than
    requests/s on a busy machine; with ``database_url`` on PostgreSQL, its backends' CPU per
    call too (those opened during the run count whole; those closed during it are lost)."""
    postgres = database_url if database_url and database_url.startswith("postgresql") else None
    backends_before = backends_cpu(postgres) if postgres else {}
    before = cpu_seconds(server_pid)
    result = uvloop.run(load.concurrent(url, request, clients, seconds))
    cpu = cpu_seconds(server_pid) - before
    calls = max(result["requests"], 1)
    figures = {**result, "cpu_ms_per_call": 1000 * cpu / calls}
    if postgres:
        backends = sum(
            spent - backends_before.get(pid, 0.0) for pid, spent in backends_cpu(postgres).items()
        )
        figures["database_cpu_ms_per_call"] = 1000 * backends / calls
    return figures


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def big_uploads(url: str, headers: dict[str, str], body: bytes, clients: int) -> None:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
        responses = await asyncio.gather(
            *(c.post(url, content=body, headers=headers) for _ in range(clients))
        )
    for response in responses:
        response.raise_for_status()


def profiled(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    command = [str(py_spy), "record", "-p", str(pid), "-d", str(max(1, round(seconds)))]
    command += ["-r", "500", "--nonblocking", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def hottest(stacks: Path, top: int = 25) -> str:
    """The functions with the most samples, inclusive (anywhere on the stack) and where
    the time itself went (the frame on top), as percentages of the event loop's samples
    (threads left out)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Thread._bootstrap" in stack:
            continue
        frames = [frame.rsplit(":", 1)[0] + ")" for frame in stack.split(";")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    lines = []
    for title, counter in (("inclusive", inclusive), ("own", own)):
        lines.append(f"--- {title}, % of {total} samples")
        lines += [f"{100 * n / total:5.1f}% {f}" for f, n in counter.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per size")
    parser.add_argument("--seconds", type=float, default=10, help="duration of the throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--big-clients", type=int, default=32)
    database = parser.add_mutually_exclusive_group()
    database.add_argument("--database-url", help="a migrated database (default: a fresh SQLite)")
    database.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        help="a PostgreSQL server to create a fresh database on, migrate and drop after",
    )
    parser.add_argument("--ledger-rows", type=int, default=0, help="settled history to add first")
    parser.add_argument("--profile", type=Path, help="py-spy Earmark's throughput run into this")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="earmark-bench-"))
    provider_port, pass_port, earmark_port = free_port(), free_port(), free_port()
    provider = f"http://127.0.0.1:{provider_port}"
    python = sys.executable
    with ExitStack() as stack:
        database_url = args.database_url or fresh_database(stack, work, "earmark", args.postgres)
        env = earmark_setup(work, provider, database_url)
        processes = {
            "provider": start(
                [python, "-m", "bench.upstreams", "provider", str(provider_port)],
                env,
                work / "provider.log",
            ),
            "passthrough": start(
                [python, "-m", "bench.upstreams", "passthrough", str(pass_port), provider],
                env,
                work / "pass.log",
            ),
            "earmark": start(serve_command(earmark_port), env, work / "earmark.log"),
        }
        for process in processes.values():
            stack.callback(process.wait, 15)
            stack.callback(process.terminate)
        wait_ready(provider, processes["provider"], work / "provider.log")
        wait_ready(f"http://127.0.0.1:{pass_port}", processes["passthrough"], work / "pass.log")
        earmark = f"http://127.0.0.1:{earmark_port}"
        wait_ready(f"{earmark}/healthz", processes["earmark"], work / "earmark.log")

        key = metered_key(earmark)
        if args.ledger_rows:
            asyncio.run(fill_ledger(database_url, key["id"], key["tenant_id"], args.ledger_rows))
        targets = {
            "direct": (f"{provider}/v1/audio/transcriptions", FORM),
            "passthrough": (f"http://127.0.0.1:{pass_port}/v1/audio/transcriptions", FORM),
            "earmark": (
                f"{earmark}/v1/audio/transcriptions",
                {**FORM, "authorization": f"Bearer {key['secret']}"},
            ),
        }

        report: dict[str, object] = {
            "machine_cpus": os.cpu_count(),
            "database": database_url.split(":", 1)[0],
            "ledger_rows": args.ledger_rows,
        }
        for label, size in (("100KB", 100_000), ("1MB", 1_000_000)):
            body = multipart(speech_wav(size), "whisper-1")
            requests = {
                name: (url, load.request_bytes(url, headers, body))
                for name, (url, headers) in targets.items()
            }
            times = uvloop.run(load.sequential(requests, args.requests))
            direct50 = load.percentile(times["direct"], 0.5)
            direct95 = load.percentile(times["direct"], 0.95)
            for name in ("passthrough", "earmark"):
                report[f"added_p50_ms_{label}_{name}"] = round(
                    load.percentile(times[name], 0.5) - direct50, 2
                )
                report[f"added_p95_ms_{label}_{name}"] = round(
                    load.percentile(times[name], 0.95) - direct95, 2
                )
            report[f"direct_p50_ms_{label}"] = round(direct50, 2)
            report[f"added_p50_ratio_{label}_earmark_over_passthrough"] = round(
                report[f"added_p50_ms_{label}_earmark"]
                / max(report[f"added_p50_ms_{label}_passthrough"], 0.01),
                2,
            )

        body = multipart(speech_wav(100_000), "whisper-1")
        c = args.concurrency
        for name in ("direct", "passthrough", "earmark"):
            url, headers = targets[name]
            request = load.request_bytes(url, headers, body)
            spy = None
            if args.profile and name == "earmark":
                spy = profiled(processes["earmark"].pid, args.seconds, args.profile)
            server = processes["provider" if name == "direct" else name].pid
            database = database_url if name == "earmark" else None
            result = throughput(server, url, request, c, args.seconds, database)
            if spy is not None:
                spy.wait()
                print(hottest(args.profile), file=sys.stderr)
            report[f"rps_100KB_c{c}_{name}"] = round(result["rps"], 1)
            report[f"p50_ms_100KB_c{c}_{name}"] = round(result["p50_ms"], 2)
            report[f"p99_ms_100KB_c{c}_{name}"] = round(result["p99_ms"], 2)
            report[f"cpu_ms_per_call_100KB_c{c}_{name}"] = round(result["cpu_ms_per_call"], 3)
            if "database_cpu_ms_per_call" in result:
                report[f"database_cpu_ms_per_call_100KB_c{c}_{name}"] = round(
                    result["database_cpu_ms_per_call"], 3
                )
        report["rps_ratio_earmark_over_passthrough"] = round(
            report[f"rps_100KB_c{c}_earmark"] / report[f"rps_100KB_c{c}_passthrough"], 2
        )

        pid = processes["earmark"].pid
        report["earmark_peak_rss_mib_before_big"] = round(peak_rss_mib(pid), 1)
        big = multipart(speech_wav(26_214_400), "whisper-1")
        url, headers = targets["earmark"]
        asyncio.run(big_uploads(url, headers, big, args.big_clients))
        report[f"earmark_peak_rss_mib_after_{args.big_clients}x25MiB"] = round(peak_rss_mib(pid), 1)
        report["naive_buffering_would_need_mib"] = args.big_clients * 25

    print(json.dumps(report, indent=2))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "gateway_overhead.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
