"""How long an upload plays, measured as a decoder will play it, by bounded code.

An upload is hostile input, and FFmpeg is a parser of hostile input. So an upload is
opened only by the demuxer its first bytes name from an allow-list (never by FFmpeg's
own guess, which also knows playlists, concat lists and SDP sessions), with no protocol
and no nested file it may open, under a time limit; and it is read under limits of
packets, duration, sample rate and channels, each refused with a 400 that names it.

The duration that holds budget, counts against rate limits and bills is counted from
what a decoder decodes, never from a header's claim: the PCM bytes of every ``data``
chunk of a WAV (FFmpeg reads them all), each Opus packet's TOC byte, the fixed frame size
of MP3 and AAC packets, FFmpeg's parsers for FLAC and Vorbis; where a container carries
a codec whose packets say nothing of their length, the packets are decoded and counted.
A file whose timestamps claim more is billed the larger.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av

from app.errors import InvalidRequest

ACCEPTED = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"
# Container (as its usual file extension) → the FFmpeg demuxer allowed to open it.
DEMUXERS = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "mp4": "mov",
    "ogg": "ogg",
    "webm": "matroska",
    "mpeg": "mpeg",
}
# Extensions a tenant may name each container by; anything else is forwarded renamed, so
# the provider decodes the format that was measured.
EXTENSIONS = {
    "wav": ("wav",),
    "flac": ("flac",),
    "mp3": ("mp3", "mpga", "mpeg"),
    "mp4": ("m4a", "mp4"),
    "ogg": ("ogg", "oga", "opus"),
    "webm": ("webm",),
    "mpeg": ("mpeg", "mpg"),
}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 384_000
MAX_CHANNELS = 16
MAX_WAV_CHUNKS = 1_024
DEFAULT_MAX_SECONDS = 10_800  # 3 hours; a model may set its own `max_audio_seconds`
PROBE_SECONDS = 10.0  # wall-clock budget for opening and reading one upload
_CHECK_EVERY = 512  # packets between clock and limit checks
_FORMAT_WHITELIST = ",".join(sorted(set(DEMUXERS.values())))
_PCM_BYTES = re.compile(r"pcm_[suf](8|16|24|32|64)(?:le|be)?$")
_MPEG_AUDIO = frozenset({"mp1", "mp1float", "mp2", "mp2float", "mp3", "mp3float"})
_FIXED_FRAME = _MPEG_AUDIO | {"aac", "aac_fixed", "alac"}
_OPUS = frozenset({"opus", "libopus"})
# Codecs whose packet durations come from their own bitstream (through FFmpeg's parser)
# only in these containers; elsewhere the container states them, so they are decoded.
_PARSED_IN = {"flac": frozenset({"flac", "ogg"}), "vorbis": frozenset({"ogg"})}
_ACCEPTED_CODECS = "PCM, FLAC, MP3, MP2, AAC, ALAC, Opus, Vorbis"


class AudioRefused(InvalidRequest):
    """The upload cannot be metered: a 400 on `file`, worded for the tenant."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, param="file", code=code)


def not_audio() -> AudioRefused:
    # One fixed message: what FFmpeg said (paths, offsets, error classes) never goes back.
    return AudioRefused(
        f"The uploaded file is not audio this gateway can read. Supported formats: {ACCEPTED}.",
        "invalid_audio",
    )


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


def forwarded_filename(filename: str, container: str) -> str:
    """The name the upload is forwarded under: the tenant's, with an extension that names
    the measured container (providers pick their decoder by it) and nothing a multipart
    header could misread."""
    stem, dot, extension = filename.rpartition(".")
    if not dot:
        stem, extension = filename, ""
    stem = re.sub(r"[^\w\- ]", "_", stem)[:100] or "audio"
    if extension.lower() not in EXTENSIONS[container]:
        extension = EXTENSIONS[container][0]
    return f"{stem}.{extension.lower()}"


# --- Which demuxer may open it -----------------------------------------------------------


def _id3v2_end(head: bytes) -> int:
    """Where an ID3v2 tag that opens the file ends (FFmpeg skips it before probing)."""
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
    return 10 + size + (10 if head[5] & 0x10 else 0)


def _is_mpeg_audio_frame(header: bytes) -> bool:
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return False
    version, layer = (header[1] >> 3) & 3, (header[1] >> 1) & 3
    bitrate, rate = header[2] >> 4, (header[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def sniff(file: BinaryIO) -> tuple[str, int]:
    """The container its first bytes say (a key of DEMUXERS) and where it starts."""
    file.seek(0)
    head = file.read(16)
    start = _id3v2_end(head)
    if start:
        file.seek(start)
        head = file.read(16)
    magic = head[:4]
    if magic in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav", start
    if magic == b"fLaC":
        return "flac", start
    if magic == b"OggS":
        return "ogg", start
    if magic == b"\x1a\x45\xdf\xa3":
        return "webm", start
    if head[4:8] == b"ftyp":
        return "mp4", start
    if magic == b"\x00\x00\x01\xba":
        return "mpeg", start
    if _is_mpeg_audio_frame(head):
        return "mp3", start
    raise not_audio()


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> None:
    """FFmpeg asks this to open any file or URL an upload names: never."""
    raise PermissionError("an upload may not open other files")


@contextmanager
def open_container(
    file: BinaryIO, container: str, timeout: float = PROBE_SECONDS
) -> Iterator[av.container.InputContainer]:
    """The upload opened by its one allowed demuxer; FFmpeg's failures are ``not_audio``."""
    file.seek(0)
    try:
        opened = av.open(
            file,
            "r",  # a spooled upload's `mode` says w+b
            format=DEMUXERS[container],
            container_options={"format_whitelist": _FORMAT_WHITELIST, "protocol_whitelist": "none"},
            metadata_errors="replace",
            timeout=timeout,
            io_open=_refuse_nested_open,
        )
    except (av.FFmpegError, MemoryError, PermissionError, UnicodeError, ValueError, IndexError):
        raise not_audio() from None
    try:
        yield opened
    finally:
        opened.close()


# --- WAV: the PCM a decoder reads --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wav:
    sample_rate: int
    channels: int
    block_align: int
    pcm_bytes: int


def _wav(file: BinaryIO, start: int, size: int) -> _Wav:
    """The PCM bytes FFmpeg's WAV demuxer can read, counted generously.

    Its header scan starts reading at the *last* ``data`` chunk it meets (to EOF when that
    chunk's size is 0 or unknown); its packet reader then finds further ``data`` chunks by
    skipping others from the exact end of each (no RIFF padding). Versions differ in which
    chunk they start at, so every ``data`` chunk either walk finds is counted: exact for
    the one-chunk files real recorders write, never less than a decoder plays.
    """
    file.seek(start)
    header = file.read(12)
    big_endian = header[:4] == b"RIFX"
    u32 = struct.Struct(">I" if big_endian else "<I")
    position = start + 12
    rf64_data_size = None
    if header[:4] == b"RF64":
        ds64 = file.read(32)
        if len(ds64) < 32 or ds64[:4] != b"ds64" or u32.unpack(ds64[4:8])[0] < 24:
            raise not_audio()
        rf64_data_size = struct.unpack("<Q", ds64[16:24])[0]
        position += 8 + u32.unpack(ds64[4:8])[0]
    unaligned = start & 1
    chunks = 0

    def read_chunk(at: int) -> tuple[bytes, int] | None:
        nonlocal chunks
        chunks += 1
        if chunks > MAX_WAV_CHUNKS:
            raise AudioRefused(
                f"The WAV file has more than {MAX_WAV_CHUNKS} chunks; real recordings "
                "have a handful.",
                "too_many_chunks",
            )
        if at + 8 > size:
            return None
        file.seek(at)
        raw = file.read(8)
        return raw[:4], u32.unpack(raw[4:])[0]

    fmt: tuple[int, int, int] | None = None
    data: dict[int, int] = {}  # where each data chunk's bytes start → where they end
    while (chunk := read_chunk(position)) is not None:
        tag, length = chunk
        body = position + 8
        following = body + length
        if tag == b"fmt " and fmt is None:
            raw = file.read(min(length, 16))
            if len(raw) < 16:
                raise not_audio()
            _, channels, rate, _, block_align = struct.unpack(
                (">" if big_endian else "<") + "HHIIH", raw[:14]
            )
            fmt = (channels, rate, block_align)
        elif tag == b"data":
            if rf64_data_size is not None:
                following = body + rf64_data_size
            elif length in (0, 0xFFFFFFFF):  # unknown: FFmpeg reads to the end of the file
                data[body] = size
                break
            data[body] = following
        if following >= size:
            break
        position = following + ((following + unaligned) & 1)
    if fmt is None or not data:
        raise not_audio()
    position = max(data.values())
    while position < size and (chunk := read_chunk(position)) is not None:
        tag, length = chunk
        if tag == b"data":
            data.setdefault(position + 8, position + 8 + length)
            position += 8 + length
        else:
            position += 8 + length + ((length + unaligned) & 1)
    pcm = sum(max(0, min(end, size) - begin) for begin, end in data.items())
    channels, rate, block_align = fmt
    return _Wav(sample_rate=rate, channels=channels, block_align=block_align, pcm_bytes=pcm)


# --- Everything else: packets --------------------------------------------------------------


def _opus_samples(packet: Any) -> int:
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


def _pcm_block(name: str, channels: int) -> int | None:
    match = _PCM_BYTES.match(name)
    if match:
        return max(1, int(match.group(1)) // 8) * channels
    if name in ("pcm_alaw", "pcm_mulaw"):
        return channels
    return None


class _Meter:
    """Counts one audio stream's samples as the packets go by."""

    def __init__(self, stream: Any, container: str) -> None:
        context = stream.codec_context
        self.stream = stream
        self.name = context.name
        self.rate = context.sample_rate
        self.channels = context.channels
        self.frame_size = context.frame_size if self.name in _FIXED_FRAME else 0
        self.pcm_block = _pcm_block(self.name, self.channels)
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
            self.bitstream += _opus_samples(packet)
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


def _check_stream(stream: Any) -> None:
    context = stream.codec_context
    if context is None:  # FFmpeg has no decoder for what the container names
        raise AudioRefused(
            f"The audio's codec is not one this gateway accepts ({_ACCEPTED_CODECS}).",
            "unsupported_codec",
        )
    name = context.name
    family = "vorbis" if "vorbis" in name else name
    known = (
        _pcm_block(name, 1) is not None
        or name in _FIXED_FRAME
        or name in _OPUS
        or family in _PARSED_IN
    )
    if not known:
        raise AudioRefused(
            f"The audio is encoded as {name}, which this gateway does not accept "
            f"({_ACCEPTED_CODECS}).",
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


def _too_long(seconds: Fraction, limits: Limits) -> AudioRefused:
    return AudioRefused(
        f"The audio plays for more than {limits.max_seconds} seconds "
        f"({float(seconds) / 3600:.2f} h counted so far); the limit for this model is "
        f"{limits.max_seconds} seconds (max_audio_seconds).",
        "audio_too_long",
    )


def _from_packets(container: Any, name: str, limits: Limits, deadline: float) -> Fraction:
    streams = list(container.streams.audio)
    for stream in streams:
        _check_stream(stream)
    meters = {stream.index: _Meter(stream, name) for stream in streams}
    packets = 0
    for packet in container.demux(*streams):
        if not packet.size:
            continue
        meters[packet.stream.index].add(packet)
        packets += 1
        if packets % _CHECK_EVERY:
            continue
        if packets > limits.max_packets:
            raise AudioRefused(
                f"The audio has more than {limits.max_packets} packets; this gateway "
                "refuses files built to be slow to read.",
                "too_many_packets",
            )
        longest = max(meter.seconds() for meter in meters.values())
        if longest > limits.max_seconds:
            raise _too_long(longest, limits)
        if time.monotonic() > deadline:
            raise _slow()
    return max(meter.seconds() for meter in meters.values())


def _slow() -> AudioRefused:
    return AudioRefused(
        f"The audio could not be read within {PROBE_SECONDS:g} s; send a simpler file.",
        "audio_too_complex",
    )


def measure(file: BinaryIO, size: int, limits: Limits = Limits()) -> Audio:
    """The upload's duration as a decoder plays it, or ``AudioRefused`` (a 400).

    Blocking and CPU-bound for large compressed files: run it in the probe pool."""
    deadline = time.monotonic() + PROBE_SECONDS
    container, start = sniff(file)
    wav = _wav(file, start, size) if container == "wav" else None
    try:
        with open_container(file, container) as opened:
            if not opened.streams.audio:
                raise not_audio()
            stream = opened.streams.audio[0]
            _check_stream(stream)
            context = stream.codec_context
            if (
                wav is not None
                and len(opened.streams.audio) == 1
                and _pcm_block(context.name, context.channels) == wav.block_align
                and (context.sample_rate, context.channels) == (wav.sample_rate, wav.channels)
            ):
                # FFmpeg reads it as the PCM its header declares (it may instead have found
                # MP3 or AC-3 inside): the bytes are the duration, exactly.
                seconds = Fraction(wav.pcm_bytes // wav.block_align, wav.sample_rate)
            else:
                seconds = _from_packets(opened, container, limits, deadline)
            audio = Audio(
                duration_ms=int(seconds * 1000),
                container=container,
                codec=context.name,
                sample_rate=context.sample_rate,
                channels=context.channels,
            )
    except (av.FFmpegError, MemoryError, UnicodeError, ValueError, IndexError, OverflowError):
        # FFmpeg gave up (or its read timeout fired): say which, never what it said.
        raise (_slow() if time.monotonic() > deadline else not_audio()) from None
    finally:
        file.seek(0)
    if audio.duration_ms > limits.max_seconds * 1000:
        raise _too_long(Fraction(audio.duration_ms, 1000), limits)
    if audio.duration_ms <= 0:
        raise AudioRefused("The uploaded file holds no audio.", "empty_audio")
    return audio
