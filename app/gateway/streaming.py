"""Server-sent event streams: a provider's relayed as it comes, a cached answer replayed.

The relay passes the provider's events through unchanged, each once it is whole, while
it watches for the ``transcript.text.done`` event that carries the final text and usage;
however the stream ends (finished, broken off by the provider, or left by the client) it
says so once, and before the client has the event that ends it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from litestar.response import Stream

from app.gateway.cache import HEADER
from app.providers import MAX_ANSWER_BYTES, AttemptFailed, UpstreamResponse

# How a stream ended (finished, left by the client, or the failure's kind when it broke
# off: broken_stream, malformed), and the done event's payload if one came.
Finish = Callable[[dict[str, Any] | None, str], Awaitable[None]]
_EVENT_STREAM = {"media_type": "text/event-stream"}
# How long the rest of a stream its client left is read for its usage (each read is timed
# by the provider's own timeout too; well within the sweeper's margin); past it the call
# is charged as uncertain.
READ_OUT_SECONDS = 120


def relay(upstream: UpstreamResponse, finish: Finish, provider: str) -> Stream:
    return Stream(
        _relayed(upstream, finish, provider),
        **_EVENT_STREAM,
        status_code=200,
        headers={"cache-control": "no-cache", HEADER: "miss"},
    )


async def _relayed(
    upstream: UpstreamResponse, finish: Finish, provider: str
) -> AsyncIterator[bytes]:
    """The provider's events as they come, each once it is whole (so that a stream broken
    off mid-event still ends with an error event the client can read, and an event
    larger than ``MAX_ANSWER_BYTES`` is never held). The call is settled before the
    client gets the event that ends it for them (the done event, or the error event of a
    broken stream), so a client that reads the ledger or its quota next sees the call
    settled. A client that leaves before the done event does not stop the provider's
    work: the rest of the stream is read, unrelayed, for the usage the provider billed."""
    read = upstream.read_chunk
    assert read is not None
    parser = _Parser(provider)
    ended: str | None = None  # how it ended, once finish has been told

    async def end(how: str) -> None:
        nonlocal ended
        ended = how
        with anyio.CancelScope(shield=True):
            await finish(parser.done, how)

    try:
        while chunk := await read():
            events = parser.feed(chunk)
            if parser.done is not None and ended is None:
                await end("finished")
            if events:
                yield events
        rest = parser.rest()  # after the last blank line: a client may still read an event
        if ended is None:
            await end("finished")
        if rest:
            yield rest
    except AttemptFailed as failure:
        if ended is None:  # broken before its done event: as OpenAI signals it mid-stream
            await end(failure.kind)
            yield _error_event(failure)  # the SDKs raise on it
    finally:
        with anyio.CancelScope(shield=True):
            try:
                if ended is None:  # the client went away
                    how = "timeout"  # unless the rest is read (a shutdown may cut it short)
                    try:
                        how = await _read_out(read, parser)
                    finally:
                        await end(how)
            finally:
                await upstream.close()


async def _read_out(read: Callable[[], Awaitable[bytes]], parser: _Parser) -> str:
    """The rest of a stream its client left, for its done event: ``left``, or how it
    failed (then the call is charged as uncertain)."""
    with anyio.move_on_after(READ_OUT_SECONDS):
        try:
            while chunk := await read():
                parser.feed(chunk)
                if parser.done is not None:
                    return "left"
            parser.rest()
            return "left"
        except AttemptFailed as failure:
            return failure.kind
    return "timeout"


class _Parser:
    """Whole events out of a provider's chunks, and the done event's payload once seen."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.pending = bytearray()
        self.done: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The events this chunk completes, as they came (empty if none)."""
        searched = max(len(self.pending) - 2, 0)  # a blank line may straddle two chunks
        self.pending += chunk
        whole = _events_end(self.pending, searched)
        events = bytes(self.pending[:whole])
        if whole:
            del self.pending[:whole]
            for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
                self.done = done_event(event) or self.done
        if len(self.pending) > MAX_ANSWER_BYTES:  # one event cannot be that large
            raise AttemptFailed(
                f"{self.provider} sent an event larger than {MAX_ANSWER_BYTES >> 20} MiB",
                kind="malformed",
                reached=True,
            )
        return events

    def rest(self) -> bytes:
        """What is left after the last blank line (a done event there counts)."""
        rest = bytes(self.pending)
        self.pending.clear()
        self.done = done_event(rest.replace(b"\r\n", b"\n")) or self.done
        return rest


def _events_end(buffer: bytearray, start: int) -> int:
    """Where the last whole event in ``buffer`` ends (past its blank line), looking from
    ``start`` on; 0 if none ends there. Lines end with LF or CRLF."""
    lf, crlf = buffer.rfind(b"\n\n", start), buffer.rfind(b"\n\r\n", start)
    return max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)


def _error_event(failure: AttemptFailed) -> bytes:
    error = {
        "error": {
            "message": f"{failure.message}; the transcript is incomplete.",
            "type": "upstream_error",
            "param": None,
            "code": failure.kind,
        }
    }
    return b"event: error\ndata: " + msgspec.json.encode(error) + b"\n\n"


def done_event(event: bytes) -> dict[str, Any] | None:
    """The payload of a ``transcript.text.done`` event (final text and usage), if it is one."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            payload = msgspec.json.decode(line[5:].strip())
        except msgspec.DecodeError:
            continue
        if isinstance(payload, dict) and payload.get("type") == "transcript.text.done":
            return payload
    return None


def replay_stream(final: dict[str, Any], headers: dict[str, str]) -> Stream:
    """A cached final result as the stream a provider would send: the text, then done."""
    return Stream(
        _replayed(final),
        **_EVENT_STREAM,
        status_code=200,
        headers={**headers, "cache-control": "no-cache"},
    )


async def _replayed(final: dict[str, Any]) -> AsyncIterator[bytes]:
    text = final.get("text", "")
    for event in (
        {"type": "transcript.text.delta", "delta": text},
        {**final, "type": "transcript.text.done"},
    ):
        yield b"data: " + msgspec.json.encode(event) + b"\n\n"
