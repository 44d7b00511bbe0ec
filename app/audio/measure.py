"""``measure``: an upload's duration as a decoder plays it, or the 400 that says why not."""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av

from app.audio import packets
from app.audio.container import open_container, sniff
from app.audio.refusals import PROBE_SECONDS, AudioRefused, not_audio, too_long, too_slow
from app.audio.wav import walk

DEFAULT_MAX_SECONDS = 10_800  # 3 hours; a model may set its own `max_audio_seconds`


@dataclass(frozen=True, slots=True)
class Limits:
    max_seconds: int = DEFAULT_MAX_SECONDS

    @property
    def max_packets(self) -> int:
        # Generous for every real codec (Opus at 20 ms is 50 packets a second).
        return 100_000 + 60 * self.max_seconds


@dataclass(frozen=True, slots=True)
class Audio:
    duration_ms: int
    container: str  # a key of DEMUXERS
    codec: str
    sample_rate: int
    channels: int


def measure(file: BinaryIO, size: int, limits: Limits = Limits()) -> Audio:
    """The upload's duration as a decoder plays it, or ``AudioRefused`` (a 400).

    Blocking and CPU-bound for large compressed files: run it in the probe pool."""
    deadline = time.monotonic() + PROBE_SECONDS
    container, start = sniff(file)
    wav = walk(file, start, size) if container == "wav" else None
    try:
        with open_container(file, container) as opened:
            if not opened.streams.audio:
                raise not_audio()
            stream = opened.streams.audio[0]
            packets.check_stream(stream)
            context = stream.codec_context
            if (
                wav is not None
                and len(opened.streams.audio) == 1
                and packets.pcm_block(context.name, context.channels) == wav.block_align
                and (context.sample_rate, context.channels) == (wav.sample_rate, wav.channels)
            ):
                # FFmpeg reads it as the PCM its header declares (it may instead have found
                # MP3 or AC-3 inside): the bytes are the duration, exactly.
                seconds = Fraction(wav.pcm_bytes // wav.block_align, wav.sample_rate)
            else:
                seconds = packets.count(opened, limits.max_seconds, limits.max_packets, deadline)
            audio = Audio(
                duration_ms=int(seconds * 1000),
                container=container,
                codec=context.name,
                sample_rate=context.sample_rate,
                channels=context.channels,
            )
    except (av.FFmpegError, MemoryError, UnicodeError, ValueError, IndexError, OverflowError):
        # FFmpeg gave up (or its read timeout fired): say which, never what it said.
        raise (too_slow() if time.monotonic() > deadline else not_audio()) from None
    finally:
        file.seek(0)
    if audio.duration_ms > limits.max_seconds * 1000:
        raise too_long(Fraction(audio.duration_ms, 1000), limits.max_seconds)
    if audio.duration_ms <= 0:
        raise AudioRefused("The uploaded file holds no audio.", "empty_audio")
    return audio
