"""The SSE relay: the provider's bytes passed on unchanged, whole events at a time, however
its chunks cut them; the call settled from the done event before the client has it."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from app.gateway import streaming
from app.providers import UpstreamResponse

DONE = {"type": "transcript.text.done", "text": "hi", "usage": {"total_tokens": 7}}


def _stream(line_end: bytes, last_blank_line: bool = True) -> bytes:
    events = [
        b'data: {"type":"transcript.text.delta","delta":"hi"}',
        b": a comment",
        b"data: " + json.dumps(DONE).encode(),
    ]
    text = (line_end * 2).join(events)
    return text + (line_end * 2 if last_blank_line else line_end)


def _upstream(chunks: list[bytes]) -> UpstreamResponse:
    left = list(chunks)

    async def read() -> bytes:
        return left.pop(0) if left else b""

    return UpstreamResponse(200, "text/event-stream", read_chunk=read)


async def _relay(chunks: list[bytes]) -> tuple[list[bytes], list[tuple]]:
    told: list[tuple] = []
    sent: list[bytes] = []

    async def finish(done, how) -> None:
        told.append((done, how, b"".join(sent)))

    upstream = _upstream(chunks)
    async for piece in streaming._relayed(upstream, finish, "p"):
        sent.append(piece)
    return sent, told


def _reading(upstream: UpstreamResponse) -> tuple[asyncio.Task[None], list[tuple]]:
    """A client reading the relay in a task of its own (cancelled when it leaves), and
    what the relay tells ``finish``, as it tells it."""
    told: list[tuple] = []

    async def finish(done, how) -> None:
        told.append((done, how))

    async def client() -> None:
        async for _ in streaming._relayed(upstream, finish, "p"):
            pass

    return asyncio.ensure_future(client()), told


@pytest.mark.anyio
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 64], ids=lambda n: f"chunks-of-{n}")
async def test_the_relay_passes_whole_events_on_unchanged(line_end: bytes, size: int):
    body = _stream(line_end)
    sent, told = await _relay([body[i : i + size] for i in range(0, len(body), size)])
    assert b"".join(sent) == body
    ((done, how, before),) = told
    assert (done, how) == (DONE, "finished")
    assert b"transcript.text.done" not in before  # settled before the client has it
    for piece in sent:
        assert piece.endswith(line_end * 2)  # whole events only


@pytest.mark.anyio
async def test_a_done_event_without_its_blank_line_still_settles_the_call():
    body = _stream(b"\n", last_blank_line=False)
    sent, told = await _relay([body])
    assert b"".join(sent) == body
    assert [(done, how) for done, how, _ in told] == [(DONE, "finished")]


@pytest.mark.anyio
@pytest.mark.parametrize("turns", [0, 1, 2, 5], ids=lambda n: f"cancelled-{n}-turns-after")
async def test_a_client_leaving_does_not_lose_the_rest_of_the_stream(turns: int):
    """The client goes (the relay's task cancelled) while the relay waits for the
    provider, or just as the done event's chunk arrives: nothing read is lost, and the
    rest is read for the done event's usage (found in review: a read that ended in the
    loop turn of the cancel was dropped, and the call billed an estimate)."""
    body = _stream(b"\n")
    buffer, arrived = [body[:40]], asyncio.Event()  # as a connection's: kept when cancelled

    async def read() -> bytes:
        while not buffer:
            await arrived.wait()
        return buffer.pop(0)

    task, told = _reading(UpstreamResponse(200, "text/event-stream", read_chunk=read))
    await asyncio.sleep(0.01)  # the relay waits for the provider's next chunk
    buffer.extend([body[40:], b""])
    arrived.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert told in ([(DONE, "left")], [(DONE, "finished")])


@pytest.mark.anyio
async def test_a_read_out_cut_short_still_settles_the_call_once_and_closes():
    """A shutdown cancels the relay again while it reads out a stream its client left:
    the call is settled all the same (as uncertain), once, and the upstream closed."""
    chunks = [b'data: {"type":"transcript.text.delta","delta":"hi"}\n\n']
    never = asyncio.Event()

    async def read() -> bytes:
        if chunks:
            return chunks.pop(0)
        await never.wait()
        return b""

    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    upstream = UpstreamResponse(200, "text/event-stream", read_chunk=read, close=close)
    task, told = _reading(upstream)
    await asyncio.sleep(0.01)
    task.cancel()  # the client left: the rest is being read
    await asyncio.sleep(0.01)
    task.cancel()  # the process shuts down
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert (told, closed) == ([(None, "timeout")], [True])
