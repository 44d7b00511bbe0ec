"""Duration probing for every accepted format, from committed espeak-ng fixtures."""

import io
from pathlib import Path

import pytest

from app.audio import NotAudio, duration_ms

pytestmark = pytest.mark.anyio
FIXTURES = Path(__file__).parent / "fixtures"
SPEECH_MS = 5848  # sox: 5.84875 s


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "webm"])
async def test_every_accepted_format_is_probed(ext):
    with (FIXTURES / f"speech.{ext}").open("rb") as file:
        measured = await duration_ms(file)
        assert file.tell() == 0  # ready to be forwarded
    assert abs(measured - SPEECH_MS) <= 60, measured  # lossy codecs pad a little


async def test_silence_has_its_length():
    with (FIXTURES / "silence-1s.wav").open("rb") as file:
        assert await duration_ms(file) == 1000


@pytest.mark.parametrize(
    "content",
    [
        b"this is not audio at all\n",
        b"RIFF\x00\x00\x00\x00WAVEjunk",
        b"\x00" * 4096,
        (FIXTURES / "speech.mp3").read_bytes()[:200],
    ],
    ids=["text", "broken-wav", "zeros", "truncated-mp3"],
)
async def test_not_audio_is_a_400_naming_the_file(content):
    with pytest.raises(NotAudio) as raised:
        await duration_ms(io.BytesIO(content))
    assert raised.value.status_code == 400
    assert raised.value.param == "file"
