"""Audio counted packet by packet as a decoder plays it.

PCM is its bytes and Opus its packets' TOC bytes, both exact and free. Every other
accepted codec (MP3, MP2, AAC, FLAC, Vorbis) is decoded and its frames' samples summed,
each at the rate that frame is in: nothing a container or a frame header states
(durations, timestamps, frame numbers, frames per packet, a rate set once at the start)
is taken on trust, because FFmpeg's decoders do not take it either. Packets a decoder
cannot read are skipped, as FFmpeg's own tools skip them.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from fractions import Fraction
from typing import Any

import av

from app.audio.refusals import ACCEPTED_CODECS, AudioRefused, too_long, too_slow

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 384_000
MAX_CHANNELS = 16
_CHECK_EVERY = 256  # packets between clock and limit checks
_PCM_BYTES = re.compile(r"pcm_[suf](8|16|24|32|64)(?:le|be)?$")
_OPUS = frozenset({"opus", "libopus"})
_DECODED = frozenset(
    {"mp1", "mp1float", "mp2", "mp2float", "mp3", "mp3float", "aac", "aac_fixed", "flac"}
)


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


def _accepted(name: str) -> bool:
    return pcm_block(name, 1) is not None or name in _OPUS or name in _DECODED or "vorbis" in name


def check_stream(stream: Any) -> None:
    context = stream.codec_context
    if context is None or not _accepted(context.name):
        shown = f"encoded as {context.name}" if context is not None else "in a codec"
        raise AudioRefused(
            f"The audio is {shown}, which this gateway does not accept ({ACCEPTED_CODECS}).",
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


class Meter:
    """Counts one audio stream's samples, by the rate they play at, as packets go by."""

    def __init__(self, stream: Any) -> None:
        context = stream.codec_context
        self.stream = stream
        self.name = context.name
        self.rate = context.sample_rate
        self.pcm_block = pcm_block(self.name, context.channels)
        self.samples: Counter[int] = Counter()  # rate → samples at that rate

    def add(self, packet: Any) -> None:
        if self.pcm_block:
            self.samples[self.rate] += packet.size // self.pcm_block
        elif self.name in _OPUS:
            self.samples[48_000] += opus_samples(packet)
        else:
            try:
                frames = packet.decode()
            except av.FFmpegError:
                return  # as ffmpeg does: skip what cannot be decoded
            for frame in frames:
                self.samples[frame.sample_rate] += frame.samples

    def finish(self) -> None:
        """Count what a decoder still holds when the stream ends."""
        if self.name in _OPUS or self.pcm_block:
            return
        try:
            for frame in self.stream.codec_context.decode(None):
                self.samples[frame.sample_rate] += frame.samples
        except av.FFmpegError:
            pass

    def seconds(self) -> Fraction:
        return sum(
            (Fraction(samples, rate) for rate, samples in self.samples.items() if rate),
            Fraction(0),
        )


def count(container: Any, max_seconds: int, max_packets: int, deadline: float) -> Fraction:
    """The longest audio stream's seconds, reading every packet under the limits."""
    streams = list(container.streams.audio)
    for stream in streams:
        check_stream(stream)
    meters = {stream.index: Meter(stream) for stream in streams}
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
    for meter in meters.values():
        meter.finish()
    return max(meter.seconds() for meter in meters.values())
