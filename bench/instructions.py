"""Instructions per call, counted by Callgrind: what a change costs, without the noise.

On this machine a server's CPU time per call drifts by more than most changes move it
(side by side in ``bench.compare_checkouts``, single 3-5 s slices of one build range over
±15%), and it has no hardware counters for ``perf``. Callgrind counts the instructions
the gateway process executes in user space (Python, its C extensions, SQLite, asyncpg,
libc; not the kernel's work in system calls, not waits), the same from run to run within
about 1%. So this starts one fake provider and, for this checkout and
optionally others, ``earmark serve`` under ``valgrind --tool=callgrind`` (counting off
while it starts), a key budget and a tenant budget on the path, metrics on; then for
each: warm-up calls, counters zeroed, ``--calls`` sequential calls of 100 KB of speech,
a dump; then as many from 16 clients at once. Under Callgrind the server runs ~50 times
slower, so each of its loop turns carries more concurrent calls than it would at full
speed: the concurrent figure flatters what is shared per turn (SQLite's group commit).
Needs valgrind (``apt-get install valgrind``).

    python -m bench.instructions [OTHER_CHECKOUT ...] [--calls 200] \\
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Coroutine
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import uvloop

from bench import load
from bench.gateway_overhead import (
    HERE,
    earmark_setup,
    fast_provider,
    fresh_database,
    metered_request,
    multipart,
    serve_command,
    speech_wav,
    start,
    wait_ready,
)
from tests.processes import free_port


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _counted(pid: int, out: Path, run: Coroutine[Any, Any, None]) -> int:
    """Instructions the process executes while ``run`` (a coroutine) runs."""
    _control(pid, "--zero")
    uvloop.run(run)
    before = set(out.parent.glob(f"{out.name}*"))
    _control(pid, "--dump")
    (dump,) = set(out.parent.glob(f"{out.name}*")) - before
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {dump}")


async def _calls(url: str, request: bytes, calls: int, clients: int) -> None:
    """``calls`` calls from ``clients`` clients at once (one: one after another)."""

    async def client(share: int) -> None:
        connection = load.Connection(url)
        try:
            for _ in range(share):
                load.check(await connection.post(request), url)
        finally:
            connection.close()

    await asyncio.gather(*(client(calls // clients) for _ in range(clients)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("others", type=Path, nargs="*", help="other checkouts, built")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        help="a PostgreSQL server to create a database on for each checkout (dropped after)",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.instructions needs valgrind: apt-get install valgrind")
    checkouts = {"this": HERE, **{str(path): path.resolve() for path in args.others}}

    work = Path(tempfile.mkdtemp(prefix="earmark-instructions-"))
    body = multipart(speech_wav(100_000), "whisper-1")
    report: dict[str, object] = {"database": "postgresql" if args.postgres else "sqlite"}
    with ExitStack() as stack:
        provider = fast_provider(stack, work)
        for index, (name, checkout) in enumerate(checkouts.items()):
            port, out = free_port(), work / f"{index}.callgrind"
            database_url = fresh_database(stack, work, str(index), args.postgres, checkout)
            env = earmark_setup(work, provider, database_url)
            valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
            command = [*valgrind, f"--callgrind-out-file={out}", *serve_command(port)]
            # `python -m app` imports the package of the directory it runs in.
            log = work / f"{index}.log"
            server = start(command, env, log, cwd=checkout)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_ready(f"{url}/healthz", server, log, timeout=600)
                target, request = metered_request(url, body)
                uvloop.run(_calls(target, request, 20, 1))
                _control(server.pid, "--instr=on")
                uvloop.run(_calls(target, request, 2 * args.clients, args.clients))
                calls = args.calls // args.clients * args.clients
                sequential = _counted(server.pid, out, _calls(target, request, calls, 1))
                concurrent = _counted(server.pid, out, _calls(target, request, calls, args.clients))
            finally:
                server.terminate()
                server.wait(60)
            report[name] = {
                "instructions_per_call_sequential": round(sequential / calls),
                f"instructions_per_call_{args.clients}_clients": round(concurrent / calls),
            }
    this = report["this"]
    for other in map(str, args.others):  # this checkout's figures as ratios of each other's
        report[other]["this_over_it"] = {  # type: ignore[index]
            figure: round(this[figure] / report[other][figure], 3)  # type: ignore[index]
            for figure in this  # type: ignore[attr-defined]
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
