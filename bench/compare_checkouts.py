"""Earmark against another checkout of itself, served side by side: does a change cost less?

This machine's speed drifts by more than most changes move Earmark (the pass-through's
CPU per call has measured 1.4 ms and 2.5 ms on one day), so two runs of
``bench.gateway_overhead`` minutes apart cannot compare two versions. This starts one
fast provider and two `earmark serve` (one worker each, its own SQLite file, a key budget
and a tenant budget on the path, metrics on; with ``--postgres``, a fresh PostgreSQL
database each, dropped after), one from each checkout, then in every round
gives each a few seconds of 16 clients (which goes first alternates) and 100 sequential
calls interleaved, and reports per round the other checkout's CPU per call, req/s and
sequential p50 as ratios of this one's, with their medians.

    git worktree add /tmp/base HEAD~1
    (cd /tmp/base && python setup.py build_ext --inplace)
    python -m bench.compare_checkouts /tmp/base [--rounds 8] [--seconds 3] \
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

A ratio under 1 means this checkout costs less than ``base``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

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
    throughput,
    wait_ready,
)
from tests.processes import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout, built")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3, help="each throughput slice")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--postgres",
        metavar="SERVER_URL",
        help="a PostgreSQL server to create a database on for each checkout (dropped after)",
    )
    args = parser.parse_args()
    checkouts = {"base": args.base.resolve(), "this": HERE}

    work = Path(tempfile.mkdtemp(prefix="earmark-compare-"))
    body = multipart(speech_wav(100_000), "whisper-1")
    with ExitStack() as stack:
        provider = fast_provider(stack, work)
        processes = {}
        urls = {}
        databases = {}
        for name, checkout in checkouts.items():
            port = free_port()
            database_url = fresh_database(stack, work, name, args.postgres, checkout)
            databases[name] = database_url
            env = earmark_setup(work, provider, database_url)
            # `python -m app` imports the package of the directory it runs in.
            processes[name] = start(serve_command(port), env, work / f"{name}.log", cwd=checkout)
            urls[name] = f"http://127.0.0.1:{port}"
        for process in processes.values():
            stack.callback(process.wait, 15)
            stack.callback(process.terminate)
        requests = {}
        for name, url in urls.items():
            wait_ready(f"{url}/healthz", processes[name], work / f"{name}.log")
            requests[name] = metered_request(url, body)
            uvloop.run(load.concurrent(*requests[name], args.concurrency, 1))  # warm up

        cpu: dict[str, list[float]] = {name: [] for name in checkouts}
        database_cpu: dict[str, list[float]] = {name: [] for name in checkouts}
        rps: dict[str, list[float]] = {name: [] for name in checkouts}
        p50: dict[str, list[float]] = {name: [] for name in checkouts}
        for round_ in range(args.rounds):
            order = list(checkouts) if round_ % 2 == 0 else list(reversed(checkouts))
            for name in order:
                result = throughput(
                    processes[name].pid,
                    *requests[name],
                    args.concurrency,
                    args.seconds,
                    databases[name],
                )
                cpu[name].append(result["cpu_ms_per_call"])
                if "database_cpu_ms_per_call" in result:
                    database_cpu[name].append(result["database_cpu_ms_per_call"])
                rps[name].append(result["rps"])
            times = uvloop.run(load.sequential(requests, 100))
            for name in checkouts:
                p50[name].append(statistics.median(times[name]))

    report: dict[str, object] = {
        "base": str(checkouts["base"]),
        "database": "postgresql" if args.postgres else "sqlite",
        "rounds": args.rounds,
    }
    series = {"cpu_per_call": cpu, "rps": rps, "sequential_p50": p50}
    if args.postgres:
        series["database_cpu_per_call"] = database_cpu
    for label, values in series.items():
        ratios = [this / base for this, base in zip(values["this"], values["base"], strict=True)]
        report[f"{label}_this_over_base"] = [round(r, 3) for r in ratios]
        report[f"{label}_this_over_base_median"] = round(statistics.median(ratios), 3)
    medians = {"cpu_ms_per_call": cpu}
    if args.postgres:
        medians["database_cpu_ms_per_call"] = database_cpu
    for label, by_checkout in medians.items():
        report[f"{label}_median"] = {
            name: round(statistics.median(values), 3) for name, values in by_checkout.items()
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
