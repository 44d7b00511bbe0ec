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


async def _read(body: bytes) -> form.Form:
    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(body), 65536):
            yield body[at : at + 65536]

    return await read_form(chunks(), f"multipart/form-data; boundary={BOUNDARY}", str(len(body)))


async def test_a_form_without_a_file_gives_back_what_it_held():
    before = form._Buffered.used
    with pytest.raises(InvalidRequest):
        await _read(_body({"model": b"whisper-1"}, None))
    assert form._Buffered.used == before


async def test_large_text_fields_beyond_the_process_budget_are_a_503(monkeypatch):
    monkeypatch.setattr(form, "MAX_BUFFERED_BYTES", 3 << 20)
    before = form._Buffered.used
    references = {"known_speaker_references[]": b"data:audio/wav;base64," + b"A" * 2_000_000}
    first = await _read(_body(references, b"RIFF"))
    with pytest.raises(Busy) as busy:
        await _read(_body(references, b"RIFF"))
    assert busy.value.status_code == 503
    assert busy.value.headers == {"retry-after": "1"}
    first.close()
    second = await _read(_body(references, b"RIFF"))  # room again once the first is done
    second.close()
    assert form._Buffered.used == before


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
