"""The audio call's form as the gateway reads it: what the forms in flight may hold in
memory together is bounded, whatever each connection sends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.errors import Busy, InvalidRequest
from app.gateway import form
from app.gateway.form import read_form

pytestmark = pytest.mark.anyio
BOUNDARY = "formboundary"


def _body(fields: dict[str, bytes], audio: bytes | None) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in fields.items()
    ]
    if audio is not None:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
            + audio
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


async def _read(body: bytes, tenant: str = "ten_1") -> form.Form:
    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(body), 65536):
            yield body[at : at + 65536]

    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return await read_form(chunks(), content_type, str(len(body)), tenant)


async def test_a_form_without_a_file_gives_back_what_it_held():
    before = form._Buffered.used
    with pytest.raises(InvalidRequest):
        await _read(_body({"model": b"whisper-1"}, None))
    assert form._Buffered.used == before


async def test_large_text_fields_beyond_the_process_budget_are_a_503(monkeypatch):
    monkeypatch.setattr(form, "MAX_BUFFERED_BYTES", 3 << 20)
    monkeypatch.setattr(form, "TENANT_SHARE", 1)  # one tenant may take it all: two do
    before = form._Buffered.used
    references = {"known_speaker_references[]": b"data:audio/wav;base64," + b"A" * 2_000_000}
    first = await _read(_body(references, b"RIFF"), "ten_1")
    with pytest.raises(Busy) as busy:
        await _read(_body(references, b"RIFF"), "ten_2")
    assert busy.value.status_code == 503
    assert busy.value.headers == {"retry-after": "1"}
    first.close()
    second = await _read(_body(references, b"RIFF"), "ten_2")  # room once the first is done
    second.close()
    assert form._Buffered.used == before


async def test_one_tenant_cannot_take_the_room_the_others_need(monkeypatch):
    """A tenant keeping many uploads open, each with large text fields, fills its own
    share of the process's budget (a 429 for it), never the others' (found by an attack
    campaign: 130 such connections left every other tenant a 503)."""
    monkeypatch.setattr(form, "MAX_BUFFERED_BYTES", 8 << 20)  # a share of 2 MiB
    before, tenants = form._Buffered.used, dict(form._Buffered.by_tenant)
    references = {"known_speaker_references[]": b"data:audio/wav;base64," + b"A" * 1_000_000}
    held = [await _read(_body(references, b"RIFF"), "greedy") for _ in range(2)]
    with pytest.raises(form.TooMuchInFlight) as refused:
        await _read(_body(references, b"RIFF"), "greedy")
    assert refused.value.status_code == 429
    assert refused.value.headers == {"retry-after": "1"}
    # Its uploads go to disk rather than into memory past its share.
    spooled = await _read(_body({"model": b"whisper-1"}, b"\x01" * 900_000), "greedy")
    assert spooled.upload is not None and spooled.upload.file._rolled  # type: ignore[attr-defined]
    others = [await _read(_body(references, b"RIFF"), f"ten_{n}") for n in range(3)]
    for read in [*held, spooled, *others]:
        read.close()
    assert form._Buffered.used == before
    assert form._Buffered.by_tenant == tenants


async def test_an_upload_past_the_budget_goes_to_disk_at_once(monkeypatch):
    monkeypatch.setattr(form, "MAX_BUFFERED_BYTES", 512 << 10)
    before = form._Buffered.used
    audio = b"\x01" * 900_000  # under the spool's memory size, over what is left
    read = await _read(_body({"model": b"whisper-1"}, audio))
    assert read.upload is not None and read.upload.size == len(audio)
    assert read.upload.file._rolled  # type: ignore[attr-defined]
    assert read.upload.file.read() == audio
    assert form._Buffered.used <= 512 << 10
    read.close()
    assert form._Buffered.used == before
