"""``measure``: an upload's duration as a decoder plays it, or the 400 that says why not."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO, TypeVar

import av

from app.audio import packets
from app.audio.container import open_container, sniff
from app.audio.disguise import may_be_disguised, probed_window
from app.audio.refusals import PROBE_SECONDS, AudioRefused, not_audio, too_long, too_slow
from app.audio.sandbox import Sandbox, over_memory
from app.audio.wav import Wav, declares_pcm16, walk

T = TypeVar("T")
DEFAULT_MAX_SECONDS = 10_800  # 3 hours; a model may set its own `max_audio_seconds`
_RATES = range(packets.MIN_SAMPLE_RATE, packets.MAX_SAMPLE_RATE + 1)
_CHANNELS = range(1, packets.MAX_CHANNELS + 1)
MAX_FAST_WINDOW = 1 << 20  # samples looked at for a hidden codec; beyond, FFmpeg probes
# A window this small is checked on the event loop (well under a millisecond): cheaper,
# for every call, than handing it to a thread that contends for the GIL.
INLINE_WINDOW = 256 << 10


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


# FFmpeg gave up (or its read timeout fired): the file is not audio this gateway can read.
_UNREADABLE = (av.FFmpegError, UnicodeError, ValueError, IndexError, OverflowError)


def measure(
    file: BinaryIO, size: int, limits: Limits = Limits(), sandbox: Sandbox | None = None
) -> Audio:
    """The upload's duration as a decoder plays it, or ``AudioRefused`` (a 400).

    Blocking and CPU-bound for large compressed files: run it in the probe pool. A plain
    PCM WAV is measured here; anything FFmpeg must demux or decode is read in
    ``sandbox``'s worker process (here, without one)."""
    deadline = time.monotonic() + PROBE_SECONDS
    container, start = sniff(file)
    try:
        wav = walk(file, start, size) if container == "wav" else None
        audio = wav and _unless_unreadable(_plain_pcm, deadline, file, size, wav, MAX_FAST_WINDOW)
        if not audio:
            seconds = deadline - time.monotonic()
            audio = (
                sandbox.run(seconds, _read, file, container, wav, limits, seconds)
                if sandbox
                else _read(file, container, wav, limits, seconds)
            )
    finally:
        file.seek(0)
    return _within(audio, limits)


def measure_inline(file: BinaryIO, size: int, limits: Limits = Limits()) -> Audio | None:
    """``measure``'s answer when the upload is a plain PCM WAV whose check is small enough
    for the event loop (``INLINE_WINDOW``), else ``None``: run ``measure`` in the probe
    pool. Same refusals as ``measure``."""
    container, start = sniff(file)
    try:
        if container != "wav":
            return None
        wav = walk(file, start, size)
        deadline = time.monotonic() + PROBE_SECONDS
        audio = _unless_unreadable(_plain_pcm, deadline, file, size, wav, INLINE_WINDOW)
    finally:
        file.seek(0)
    return audio and _within(audio, limits)


def _within(audio: Audio, limits: Limits) -> Audio:
    if audio.duration_ms > limits.max_seconds * 1000:
        raise too_long(Fraction(audio.duration_ms, 1000), limits.max_seconds)
    if audio.duration_ms <= 0:
        raise AudioRefused("The uploaded file holds no audio.", "empty_audio")
    return audio


def _plain_pcm(file: BinaryIO, size: int, wav: Wav, max_window: int) -> Audio | None:
    """A one-chunk WAV that FFmpeg reads as the PCM its header declares, and whose samples
    its prober could not read as anything else: its bytes are its duration, exactly.
    Otherwise ``None``, and FFmpeg probes and decodes it; also when the samples its prober
    would look at are more than ``max_window`` bytes (high rates: FFmpeg's prober reads so
    much that it may as well decide)."""
    if wav.data_chunks != 1 or not (wav.block_align and wav.sample_rate):
        return None
    window = probed_window(wav.block_align * wav.sample_rate, wav.block_align)
    if window > max_window:
        return None
    file.seek(0)
    if declares_pcm16(file.read(64), size, _RATES, _CHANNELS):
        seconds = Fraction(wav.pcm_bytes // wav.block_align, wav.sample_rate)
        audio = Audio(_ms(seconds), "wav", "pcm_s16le", wav.sample_rate, wav.channels)
    else:
        with open_container(file, "wav", probe_streams=False) as opened:
            audio = _pcm_audio(opened, wav)
    if audio is None:
        return None
    file.seek(wav.data_start)
    return None if may_be_disguised(file.read(window)) else audio


def _pcm_audio(opened: av.container.InputContainer, wav: Wav) -> Audio | None:
    """The WAV's duration from its bytes, if FFmpeg reads its one stream as the PCM the
    header declares (it may instead have found MP3 or AC-3 inside)."""
    if len(opened.streams.audio) != 1:
        return None
    stream = opened.streams.audio[0]
    packets.check_stream(stream)
    context = stream.codec_context
    if packets.pcm_block(context.name, context.channels) != wav.block_align or (
        context.sample_rate,
        context.channels,
    ) != (wav.sample_rate, wav.channels):
        return None
    seconds = Fraction(wav.pcm_bytes // wav.block_align, wav.sample_rate)
    return Audio(_ms(seconds), "wav", context.name, context.sample_rate, context.channels)


def _ms(seconds: Fraction) -> int:
    """The duration in whole milliseconds, rounded up: cut down, a file one sample past
    a whole second would be billed a second less than a provider plays."""
    return math.ceil(seconds * 1000)


def _unless_unreadable(function: Callable[..., T], deadline: float, *args: Any) -> T:
    """``function(*args)``; what FFmpeg could not read is a 400 that says whether it was
    too slow, too big for memory or not audio, never what FFmpeg said."""
    try:
        return function(*args)
    except _UNREADABLE:
        raise (too_slow() if time.monotonic() > deadline else not_audio()) from None
    except MemoryError:
        raise over_memory() from None


def _read(file: BinaryIO, container: str, wav: Wav | None, limits: Limits, seconds: float) -> Audio:
    """The upload as FFmpeg's prober reads it, PCM by its bytes, the rest decoded (in a
    sandbox worker, on the worker's own handle on the upload)."""
    deadline = time.monotonic() + seconds
    return _unless_unreadable(_decoded, deadline, file, container, wav, limits, deadline)


def _decoded(
    file: BinaryIO, container: str, wav: Wav | None, limits: Limits, deadline: float
) -> Audio:
    with open_container(file, container) as opened:
        if not opened.streams.audio:
            raise not_audio()
        if wav is not None and (audio := _pcm_audio(opened, wav)) is not None:
            return audio
        stream = opened.streams.audio[0]
        packets.check_stream(stream)
        context = stream.codec_context
        seconds = packets.count(opened, limits.max_seconds, limits.max_packets, deadline)
        return Audio(
            duration_ms=_ms(seconds),
            container=container,
            codec=context.name,
            sample_rate=context.sample_rate,
            channels=context.channels,
        )
