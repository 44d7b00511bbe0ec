"""Audio built in the tests: honest files of any length, and the forged ones an attacker
sends (headers that under-state, bombs, a codec hidden in a PCM WAV)."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from fractions import Fraction

import av

TONE_RATE = 16_000


def tone(seconds: float, rate: int = TONE_RATE) -> bytes:
    """A 400 Hz sine as 16-bit mono PCM (one period repeated: quick at any length)."""
    period = [int(8000 * math.sin(2 * math.pi * i / 40)) for i in range(40)]
    one = struct.pack(f"<{len(period)}h", *period)
    samples = int(seconds * rate)
    return (one * (samples // 40 + 1))[: samples * 2]


def riff(*chunks: tuple[bytes, bytes], size_override: dict[int, int] | None = None) -> bytes:
    """A RIFF/WAVE file of the given (tag, body) chunks; ``size_override`` forges the
    stated size of the chunk at that index."""
    parts = []
    for index, (tag, body) in enumerate(chunks):
        size = (size_override or {}).get(index, len(body))
        parts.append(tag + struct.pack("<I", size) + body + (b"\0" if len(body) % 2 else b""))
    out = b"".join(parts)
    return b"RIFF" + struct.pack("<I", 4 + len(out)) + b"WAVE" + out


def fmt_chunk(rate: int = TONE_RATE, channels: int = 1, bits: int = 16, tag: int = 1) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def wav(pcm: bytes, rate: int = TONE_RATE, channels: int = 1, bits: int = 16) -> bytes:
    return riff((b"fmt ", fmt_chunk(rate, channels, bits)), (b"data", pcm))


def encode(container: str, codec: str, pcm: bytes, rate: int = TONE_RATE) -> bytes:
    """16-bit mono PCM encoded with FFmpeg (``libopus`` resamples to 48 kHz itself)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=48_000 if codec == "libopus" else rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        step = 4096
        for start in range(0, len(pcm) // 2, step):
            chunk = pcm[start * 2 : (start + step) * 2]
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(chunk) // 2)
            frame.planes[0].update(chunk)
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                out.mux(stream.encode(resampled))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def decoded_seconds(data: bytes, container: str | None = None) -> float:
    """What FFmpeg's decoders play from ``data`` (each frame at its own rate), skipping
    packets they cannot decode, as ffmpeg does."""
    with av.open(io.BytesIO(data), format=container, metadata_errors="replace") as opened:
        stream = opened.streams.audio[0]
        seconds = 0.0
        for packet in opened.demux(stream):
            try:
                seconds += sum(frame.samples / frame.sample_rate for frame in packet.decode())
            except av.FFmpegError:
                continue
        return seconds


def repacked(data: bytes, container: str, into: str, per_packet: int) -> bytes:
    """``data``'s packets regrouped ``per_packet`` to a packet, each stamped one tick long:
    a container whose packets say they hold a fraction of what a decoder plays."""
    buffer = io.BytesIO()
    with av.open(io.BytesIO(data), format=container) as source, av.open(buffer, "w", into) as out:
        template = source.streams.audio[0]
        stream = out.add_stream_from_template(template)
        packets = [bytes(p) for p in source.demux(template) if p.size]
        for n in range(0, len(packets), per_packet):
            packet = av.Packet(b"".join(packets[n : n + per_packet]))
            packet.stream, packet.time_base = stream, Fraction(1, 1000)
            packet.pts = packet.dts = n // per_packet
            packet.duration = 1
            out.mux(packet)
    return buffer.getvalue()


def id3_tag(body: bytes) -> bytes:
    size = len(body)
    synchsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + synchsafe + body


def mpegts_aac(seconds: float) -> bytes:
    return encode("mpegts", "aac", tone(seconds, 8_000), rate=8_000)


# --- FLAC, written bit by bit: silence of any length in a few bytes per 4 seconds -------


def _crc(data: bytes, poly: int, bits: int) -> int:
    crc, top, mask = 0, 1 << (bits - 1), (1 << bits) - 1
    for byte in data:
        crc ^= byte << (bits - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


def _utf8_number(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | (n >> 12) & 0x3F, 0x80 | (n >> 6) & 0x3F, 0x80 | n & 0x3F])


_FLAC_RATE_CODES = {0: 0, 192_000: 3, 8_000: 4, 16_000: 5}


def silent_flac(
    seconds: float,
    rate: int = 8_000,
    claim_samples: int | None = None,
    numbers: list[int] | None = None,
    frame_rates: list[int] | None = None,
) -> bytes:
    """Mono 16-bit FLAC of silence in 65,535-sample frames, each one CONSTANT subframe;
    STREAMINFO claims ``claim_samples`` (default: the truth). ``numbers`` forges the
    frames' numbers; ``frame_rates`` gives frames a rate of their own (0: STREAMINFO's)."""
    block = 65_535
    total = int(seconds * rate)
    claimed = total if claim_samples is None else claim_samples
    info = struct.pack(">HH", block, block) + b"\0\0\0" + b"\0\0\0"
    packed = (rate << 44) | (0 << 41) | (15 << 36) | claimed  # rate, channels-1, bps-1, samples
    info += packed.to_bytes(8, "big") + b"\0" * 16
    out = bytearray(b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info)
    count = -(-total // block)
    for index in range(count):
        samples = min(block, total - index * block)
        number = numbers[index] if numbers else index
        code = _FLAC_RATE_CODES[frame_rates[index]] if frame_rates else 0
        header = bytes([0xFF, 0xF8, 0x70 | code, 0x00]) + _utf8_number(number)
        header += (samples - 1).to_bytes(2, "big")
        header += bytes([_crc(header, 0x07, 8)])
        frame = header + b"\x00\x00\x00"  # CONSTANT subframe, value 0
        out += frame + _crc(frame, 0x8005, 16).to_bytes(2, "big")
    return bytes(out)


def forge_streaminfo(flac: bytes, claim_samples: int) -> bytes:
    """An encoded FLAC whose STREAMINFO claims ``claim_samples`` samples."""
    data = bytearray(flac)
    field = int.from_bytes(data[21:26], "big")
    field = (field & ~((1 << 36) - 1)) | claim_samples
    data[21:26] = field.to_bytes(5, "big")
    return bytes(data)


Forge = Callable[[bytes], bytes]


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def mp4_index_bomb(chunks: int = 80) -> bytes:
    """A few-kilobyte QuickTime PCM file whose sample-to-chunk table claims 2**31 samples
    a chunk: FFmpeg's demuxer builds an index entry per 1,024 of them while opening it,
    gigabytes for a handful of chunks (found by an attack campaign)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as out:
        stream = out.add_stream("pcm_s16le", rate=TONE_RATE, layout="mono")
        pcm = tone(1)
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = TONE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data = bytearray(buffer.getvalue())

    def replace(kind: bytes, payload: bytes) -> int:
        at = data.find(kind) - 4
        old = struct.unpack(">I", data[at : at + 4])[0]
        data[at : at + old] = _box(kind, payload)
        return 8 + len(payload) - old

    at = data.find(b"stco")
    first = struct.unpack(">I", data[at + 12 : at + 16])[0]
    delta = replace(b"stsc", struct.pack(">IIIII", 0, 1, 1, 0x7FFFFFFF, 1))
    delta += replace(b"stco", struct.pack(">II", 0, chunks) + struct.pack(">I", first) * chunks)
    for kind in (b"stbl", b"minf", b"mdia", b"trak", b"moov"):
        at = data.find(kind) - 4
        data[at : at + 4] = struct.pack(">I", struct.unpack(">I", data[at : at + 4])[0] + delta)
    if data.find(b"moov") < data.find(b"mdat"):  # the samples moved with the index
        at = data.find(b"stco") + 12
        data[at : at + 4 * chunks] = struct.pack(">I", first + delta) * chunks
    return bytes(data)
