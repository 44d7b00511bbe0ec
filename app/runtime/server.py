"""The HTTP server: uvicorn with httptools, held to the limits a public gateway needs.

uvicorn bounds none of what a slow or hostile client does before the application sees a
request: a connection that sends nothing, headers one byte a second, ten megabytes of
headers, a body that trickles in forever, a thousand idle sockets, a flood of pipelined
requests. ``GuardedProtocol`` adds, per connection: a deadline for the request line and
headers, caps on their size and count (431; the raw bytes of an unfinished head are
bounded too, since the parser buffers a header until it ends), a minimum body rate once a
grace period has passed (408), a cap on requests pipelined behind the one being served,
a close after an answer given before its request's body was read (the answer says
``connection: close``, so no client sends another request on it), and a cap on open
connections per process (503, then close), never more than its open-file limit serves.
Idle keep-alive connections close after ``keepalive_seconds``. Time the gateway itself
stops reading (backpressure) is not counted against the client.

Every close with the client still sending lingers: the answer, a FIN, then what the
client still sends is read and dropped, up to ``LINGER_SECONDS`` and an upload's worth of
bytes. Closed at once with its bytes unread, the kernel would reset the connection and
the client lose the answer it had not yet read.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import time
from asyncio import TimerHandle, Transport
from collections import Counter
from typing import Any, ClassVar

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.gateway.form import MAX_FILE_BYTES
from app.settings import HttpLimits, load_settings

PROTOCOL = "app.runtime.server:GuardedProtocol"
_TICK_SECONDS = 1.0
MAX_PIPELINED = 16  # requests waiting behind the one being answered
LINGER_SECONDS = 5.0  # a closing connection drains what the client still sends ...
LINGER_BYTES = MAX_FILE_BYTES + (1 << 20)  # ... up to a whole refused upload
_HEAD_SLACK = 64 << 10  # raw bytes an unfinished head may span beyond the header cap
_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Busy",
}
# A Host header as a URL carries it: a name, an IPv4 or a bracketed IPv6 address, and a port
# of at most five digits. A request URL built from any other (a port of `abc` or 99999)
# raises in the framework's URL parser: a 500 for whoever sends it.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z!$&'()*+,;=\-._~%]*)(?::([0-9]{0,5}))?")
# Its socket, a spooled upload, an upstream connection, and a refused one lingering.
FILES_PER_CONNECTION = 4
FILES_RESERVED = 64


@functools.cache
def _trusted(host: str) -> bool:
    """A trusted proxy's address (uvicorn's forwarded_allow_ips, from the same variable):
    its connections carry many clients', so no one client's cap applies to them."""
    allowed = {
        part.strip() for part in os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1").split(",")
    }
    return "*" in allowed or host in allowed


@functools.cache
def _limits() -> HttpLimits:
    """This process's limits, read once from the environment (workers inherit it), with
    no more connections than its open-file limit can serve (``connection_cap``)."""
    limits = load_settings().http
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(limits.max_connections, soft)
    return msgspec.structs.replace(limits, max_connections=cap)


def connection_cap(configured: int, open_files: int) -> int:
    """Connections a process can serve within ``open_files``: each may need its socket, a
    spooled upload, an upstream connection and a refused connection lingering beside it,
    with a reserve for the database, the journal, logs and the pools."""
    if open_files == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, (open_files - FILES_RESERVED) // FILES_PER_CONNECTION))


def _raw_response(status: int, message: str) -> bytes:
    body = f'{{"error":{{"message":"{message}","type":"invalid_request_error","param":null,'
    body += f'"code":"http_{status}"}}}}'
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
        + ("retry-after: 1\r\n" if status == 503 else "")
        + f"\r\n{body}"
    ).encode()


def _valid_host(value: bytes) -> bool:
    match = _HOST.fullmatch(value)
    return match is not None and int(match[1] or 0) <= 65535


class _Lingering:
    """The transport as a request's cycle sees it: its ``close`` lingers (see ``_close``)."""

    def __init__(self, protocol: GuardedProtocol, transport: Transport) -> None:
        self._protocol, self._transport = protocol, transport

    def close(self) -> None:
        self._protocol._close()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._transport, name)
        if callable(value):  # a method (write, is_closing...): looked up once a connection
            setattr(self, name, value)
        return value


class GuardedProtocol(HttpToolsProtocol):
    # Connections refused at the cap still lingering, in this process: at most as many as
    # the cap, so that sockets never hold more than twice the cap's files.
    refused_open = 0
    # Open connections by client address (not counting trusted proxies' addresses).
    by_client: ClassVar[Counter[str]] = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _limits()
        self._timer: TimerHandle | None = None
        self._refused = False
        self._header_bytes = 0
        self._header_count = 0
        self._body_started = 0.0
        self._body_bytes = 0
        self._heading = True  # between a request's start and the end of its headers
        self._head_bytes = 0
        self._message_done = False
        self._keep_alive = True  # what the request asked for, until its body is read
        self._lingered = 0
        self._client: str | None = None  # counted in by_client

    # --- the connection ---

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        limits = self.limits
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) and not _trusted(peer[0]) else None
        if len(self.connections) >= limits.max_connections:
            self._refuse_at_once(transport, "Too many open connections; retry shortly.")
            return
        if client is not None and self.by_client[client] >= limits.max_connections_per_client:
            self._refuse_at_once(transport, "Too many open connections from your address.")
            return
        if client is not None:
            self._client = client
            self.by_client[client] += 1
        super().connection_made(transport)
        self._arm(limits.header_seconds, self._headers_overdue)

    def _refuse_at_once(self, transport: Transport, message: str) -> None:
        self.transport = transport
        if GuardedProtocol.refused_open >= self.limits.max_connections:
            transport.close()  # as many refusals are still lingering: no file for it
            return
        GuardedProtocol.refused_open += 1
        self._refuse(503, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.flow is None:  # refused before it was ever served
            if self._refused:
                GuardedProtocol.refused_open -= 1
            return
        if self._client is not None:
            self.by_client[self._client] -= 1
            if not self.by_client[self._client]:
                del self.by_client[self._client]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # closing: drop it, within bounds
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        if self._heading and not self._refused:
            # httptools keeps an unfinished header line to itself: bound what it may hold.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes + _HEAD_SLACK:
                self._refuse(
                    431, f"Request line and headers exceed {self.limits.max_header_bytes} bytes."
                )

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    # --- the request line and headers ---

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._header_count = self._head_bytes = 0
        self._heading, self._message_done = True, False
        self._arm(self.limits.header_seconds, self._headers_overdue)

    def on_url(self, url: bytes) -> None:
        if self._refused or not self._within_header_limits(len(url), 0):
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused or not self._within_header_limits(len(name) + len(value), 1):
            return
        if len(name) == 4 and name.lower() == b"host" and not _valid_host(value):
            self._refuse(400, "The Host header is not a host name or address and a port.")
            return
        super().on_header(name, value)

    def _within_header_limits(self, size: int, count: int) -> bool:
        self._header_bytes += size
        self._header_count += count
        limits = self.limits
        if self._header_bytes > limits.max_header_bytes:
            self._refuse(431, f"Request line and headers exceed {limits.max_header_bytes} bytes.")
        elif self._header_count > limits.max_headers:
            self._refuse(431, f"More than {limits.max_headers} request headers.")
        return not self._refused

    def _headers_overdue(self) -> None:
        self._refuse(408, f"Request headers not received within {self.limits.header_seconds:g} s.")

    # --- the body ---

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._heading = False
        super().on_headers_complete()
        cycle = self.cycle
        assert cycle is not None
        # An answer given before the body is read says `connection: close`, so no client
        # sends its next request on a connection about to close; its close lingers.
        cycle.transport = _Lingering(self, self.transport)  # type: ignore[assignment]
        self._keep_alive, cycle.keep_alive = cycle.keep_alive, False
        if len(self.pipeline) > MAX_PIPELINED:  # a flood, not a client: drop it
            self.pipeline.clear()
            self._close()
            return
        self._body_started, self._body_bytes = time.monotonic(), 0
        self._arm(_TICK_SECONDS, self._check_body_rate)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._message_done = True
        if self.cycle is not None:
            self.cycle.keep_alive = self._keep_alive
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self._message_done and not self.pipeline:
            # Answered before its body was read (a 401, a 413): stop reading the rest.
            self.server_state.total_requests += 1
            self._close()
            return
        super().on_response_complete()

    def _check_body_rate(self) -> None:
        limits = self.limits
        if self.flow is not None and self.flow.read_paused:
            self._body_started += _TICK_SECONDS  # the gateway is not reading: not the client's
        elapsed = time.monotonic() - self._body_started - limits.body_grace_seconds
        if elapsed > 0 and self._body_bytes < limits.min_body_rate * elapsed:
            self._refuse(
                408,
                f"The request body arrived slower than {limits.min_body_rate} bytes/s.",
                mid_request=True,
            )
            return
        self._arm(_TICK_SECONDS, self._check_body_rate)

    # --- refusing ---

    def _refuse(self, status: int, message: str, *, mid_request: bool = False) -> None:
        cycle = self.cycle
        if cycle is not None and mid_request:
            cycle.disconnected = True  # the application's receive() sees the client leave
            cycle.message_event.set()
        if cycle is None or not cycle.response_started:
            self.transport.write(_raw_response(status, message))
        self._close()

    def _close(self) -> None:
        """Send what is written, then a FIN; drop what the client still sends until it
        closes too or ``LINGER_SECONDS`` pass."""
        if self._refused:
            return
        self._refused = True  # data_received drops everything from here on
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()  # it may have been paused for backpressure
        self._arm(LINGER_SECONDS, transport.close)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def raise_open_file_limit() -> None:
    """Let the process hold as many sockets as the system allows it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# One format for every line the server prints: Earmark's and Alembic's (through Litestar's
# logging config, which uses this format) and uvicorn's own.
LOG_FORMAT = "%(levelname)s - %(asctime)s - %(name)s - %(module)s - %(message)s"


def log_config(level: str) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"standard": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "standard",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "earmark.serve")
        },
    }


def run(host: str, port: int, workers: int, log_level: str) -> None:
    raise_open_file_limit()
    limits = _limits()
    uvicorn.run(
        "app.main:create_app",
        log_config=log_config(log_level),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=PROTOCOL,
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=int(limits.keepalive_seconds),
    )
