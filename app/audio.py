"""Audio duration from the upload itself, so metering never depends on the provider.

PCM WAV is read from its header with the standard library (FFmpeg's prober reads several
milliseconds of data for WAV); everything else (flac, mp3, mp4, mpeg, mpga, m4a, ogg,
webm, …) is probed by FFmpeg through PyAV, in a worker thread.
"""

from __future__ import annotations

import asyncio
import wave
from typing import BinaryIO

import av

from app.errors import InvalidRequest


class NotAudio(InvalidRequest):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"The uploaded file is not audio this gateway can read ({detail}). Supported "
            "formats: flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm.",
            param="file",
            code="invalid_audio",
        )


def _wav_ms(file: BinaryIO) -> int | None:
    file.seek(0)
    if file.read(12)[8:12] != b"WAVE":
        return None
    file.seek(0)
    try:
        with wave.open(file, "rb") as reader:
            rate = reader.getframerate()
            return reader.getnframes() * 1000 // rate if rate else None
    except (wave.Error, EOFError):
        return None  # not plain PCM (e.g. WAVE_FORMAT_EXTENSIBLE): let FFmpeg read it


def _ffmpeg_ms(file: BinaryIO) -> int:
    file.seek(0)
    try:
        with av.open(file, mode="r") as container:
            streams = [stream for stream in container.streams if stream.type == "audio"]
            if not streams:
                raise NotAudio("no audio stream")
            if container.duration is not None:
                return container.duration * 1000 // av.time_base
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                return int(stream.duration * stream.time_base * 1000)
            end = 0.0  # no duration in the header (e.g. live-recorded webm): read to the end
            for packet in container.demux(stream):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            return int(end * 1000)
    except av.FFmpegError as error:
        raise NotAudio(type(error).__name__) from None


def duration_ms_sync(file: BinaryIO) -> int:
    try:
        duration = _wav_ms(file)
        if duration is None:
            duration = _ffmpeg_ms(file)
    finally:
        file.seek(0)
    if duration <= 0:
        raise NotAudio("it holds no audio")
    return duration


async def duration_ms(file: BinaryIO) -> int:
    """The audio's duration in milliseconds; ``NotAudio`` (a 400) if it is not audio."""
    if _wav_ms(file) is not None:  # a header read: cheaper than a thread hop
        return duration_ms_sync(file)
    return await asyncio.to_thread(duration_ms_sync, file)
