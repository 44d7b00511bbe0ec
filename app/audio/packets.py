"""Samples counted packet by packet, from what each codec's packets hold."""

from __future__ import annotations

import re
import time
from fractions import Fraction
from typing import Any

from app.audio.refusals import ACCEPTED_CODECS, AudioRefused, too_long, too_slow

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 384_000
MAX_CHANNELS = 16
_CHECK_EVERY = 512  # packets between clock and limit checks
_PCM_BYTES = re.compile(r"pcm_[suf](8|16|24|32|64)(?:le|be)?$")
_MPEG_AUDIO = frozenset({"mp1", "mp1float", "mp2", "mp2float", "mp3", "mp3float"})
_FIXED_FRAME = _MPEG_AUDIO | {"aac", "aac_fixed", "alac"}
_OPUS = frozenset({"opus", "libopus"})
# Codecs whose packet durations come from their own bitstream (through FFmpeg's parser)
# only in these containers; elsewhere the container states them, so they are decoded.
_PARSED_IN = {"flac": frozenset({"flac", "ogg"}), "vorbis": frozenset({"ogg"})}


def opus_samples(packet: Any) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716, 3.1)."""
    data = memoryview(packet)
    if not data:
        return 0
    config, code = data[0] >> 3, data[0] & 3
    if config < 12:
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:
        frame = (480, 960)[config & 1]
    else:
        frame = (120, 240, 480, 960)[config & 3]
    frames = 1 if code == 0 else 2 if code < 3 else (data[1] & 0x3F if len(data) > 1 else 0)
    return frames * frame


def pcm_block(name: str, channels: int) -> int | None:
    match = _PCM_BYTES.match(name)
    if match:
        return max(1, int(match.group(1)) // 8) * channels
    if name in ("pcm_alaw", "pcm_mulaw"):
        return channels
    return None


class Meter:
    """Counts one audio stream's samples as the packets go by."""

    def __init__(self, stream: Any, container: str) -> None:
        context = stream.codec_context
        self.stream = stream
        self.name = context.name
        self.rate = context.sample_rate
        self.channels = context.channels
        self.frame_size = context.frame_size if self.name in _FIXED_FRAME else 0
        self.pcm_block = pcm_block(self.name, self.channels)
        parsed = _PARSED_IN.get("vorbis" if "vorbis" in self.name else self.name)
        self.decode = parsed is not None and container not in parsed
        self.time_base = stream.time_base
        self.bitstream = 0  # samples the packets themselves hold
        self.stated = 0  # packet durations, in the stream's time base
        self.first: int | None = None
        self.last = 0

    def add(self, packet: Any) -> None:
        if self.pcm_block:
            self.bitstream += packet.size // self.pcm_block
        elif self.name in _OPUS:
            self.bitstream += opus_samples(packet)
        elif self.frame_size:
            self.bitstream += self.frame_size
        elif self.decode:
            self.bitstream += sum(frame.samples for frame in packet.decode())
        duration = packet.duration or 0
        self.stated += duration
        if packet.pts is not None:
            self.first = packet.pts if self.first is None else min(self.first, packet.pts)
            self.last = max(self.last, packet.pts + duration)

    def seconds(self) -> Fraction:
        rate = 48_000 if self.name in _OPUS else self.rate
        time_base = Fraction(self.time_base) if self.time_base else Fraction(0)
        span = (self.last - (self.first or 0)) * time_base
        return max(Fraction(self.bitstream, rate), self.stated * time_base, span)


def check_stream(stream: Any) -> None:
    context = stream.codec_context
    if context is None:  # FFmpeg has no decoder for what the container names
        raise AudioRefused(
            f"The audio's codec is not one this gateway accepts ({ACCEPTED_CODECS}).",
            "unsupported_codec",
        )
    name = context.name
    family = "vorbis" if "vorbis" in name else name
    known = (
        pcm_block(name, 1) is not None
        or name in _FIXED_FRAME
        or name in _OPUS
        or family in _PARSED_IN
    )
    if not known:
        raise AudioRefused(
            f"The audio is encoded as {name}, which this gateway does not accept "
            f"({ACCEPTED_CODECS}).",
            "unsupported_codec",
        )
    if not MIN_SAMPLE_RATE <= context.sample_rate <= MAX_SAMPLE_RATE:
        raise AudioRefused(
            f"The audio's sample rate is {context.sample_rate} Hz; this gateway accepts "
            f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz.",
            "sample_rate_out_of_range",
        )
    if not 1 <= context.channels <= MAX_CHANNELS:
        raise AudioRefused(
            f"The audio has {context.channels} channels; this gateway accepts 1 to {MAX_CHANNELS}.",
            "too_many_channels",
        )


def count(
    container: Any, name: str, max_seconds: int, max_packets: int, deadline: float
) -> Fraction:
    """The longest audio stream's seconds, demuxing every packet under the limits."""
    streams = list(container.streams.audio)
    for stream in streams:
        check_stream(stream)
    meters = {stream.index: Meter(stream, name) for stream in streams}
    packets = 0
    for packet in container.demux(*streams):
        if not packet.size:
            continue
        meters[packet.stream.index].add(packet)
        packets += 1
        if packets % _CHECK_EVERY:
            continue
        if packets > max_packets:
            raise AudioRefused(
                f"The audio has more than {max_packets} packets; this gateway "
                "refuses files built to be slow to read.",
                "too_many_packets",
            )
        longest = max(meter.seconds() for meter in meters.values())
        if longest > max_seconds:
            raise too_long(longest, max_seconds)
        if time.monotonic() > deadline:
            raise too_slow()
    return max(meter.seconds() for meter in meters.values())
