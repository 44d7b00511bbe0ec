"""A cheap HTTP/1.1 load generator: pre-encoded requests over keep-alive sockets.

An httpx client spends more CPU per request than the servers it measures (it caps the
provider called directly near 390 req/s on two cores), so throughput measured with it is
the client's. This one writes a request encoded once and reads the answer's status line,
headers and body (Content-Length or chunked), on uvloop, nothing more.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit


def request_bytes(url: str, headers: dict[str, str], body: bytes) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        """Send one request and read its whole answer; returns the status."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        fields = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            await self.reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def sequential(targets: dict[str, tuple[str, bytes]], n: int) -> dict[str, list[float]]:
    """Milliseconds per request, the targets interleaved so noise hits them alike."""
    connections = {name: Connection(url) for name, (url, _) in targets.items()}
    times: dict[str, list[float]] = {name: [] for name in targets}
    for name, (_, request) in targets.items():  # warm up connections and caches
        for _ in range(5):
            check(await connections[name].post(request), name)
    for _ in range(n):
        for name, (_, request) in targets.items():
            started = time.perf_counter()
            status = await connections[name].post(request)
            times[name].append((time.perf_counter() - started) * 1000)
            check(status, name)
    for connection in connections.values():
        connection.close()
    return times


async def concurrent(url: str, request: bytes, clients: int, seconds: float) -> dict[str, float]:
    """Requests a second over ``clients`` keep-alive connections, and their p50/p99 (ms)."""
    times: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        connection = Connection(url)
        try:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                status = await connection.post(request)
                times.append((time.perf_counter() - started) * 1000)
                check(status, url)
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(times),
        "rps": len(times) / elapsed,
        "p50_ms": percentile(times, 0.5),
        "p99_ms": percentile(times, 0.99),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check(status: int, target: str) -> None:
    if status != 200:
        raise SystemExit(f"{target} answered {status}")
