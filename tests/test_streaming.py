"""The SSE relay: the provider's bytes passed on unchanged, whole events at a time, however
its chunks cut them; the call settled from the done event before the client has it."""

from __future__ import annotations

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


async def _relay(chunks: list[bytes]) -> tuple[list[bytes], list[tuple]]:
    async def events():
        for chunk in chunks:
            yield chunk

    told: list[tuple] = []
    sent: list[bytes] = []

    async def finish(done, how) -> None:
        told.append((done, how, b"".join(sent)))

    upstream = UpstreamResponse(200, "text/event-stream", events=events())
    async for piece in streaming._relayed(upstream, finish, "p"):
        sent.append(piece)
    return sent, told


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
async def test_a_client_leaving_mid_read_does_not_lose_the_rest_of_the_stream():
    """The client goes while the relay waits for the provider (its task cancelled): the
    read under way is not lost, and the rest is read for the done event's usage."""
    import asyncio

    body = _stream(b"\n")
    first, rest = body[:40], body[40:]

    async def events():
        yield first
        await asyncio.sleep(0.2)  # the provider still working
        yield rest

    told: list[tuple] = []

    async def finish(done, how) -> None:
        told.append((done, how))

    upstream = UpstreamResponse(200, "text/event-stream", events=events())
    relay = streaming._relayed(upstream, finish, "p")

    async def client() -> None:
        async for _ in relay:
            pass

    task = asyncio.ensure_future(client())
    await asyncio.sleep(0.05)  # waiting for the provider's next chunk
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert told == [(DONE, "left")]
