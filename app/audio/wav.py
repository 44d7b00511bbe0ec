"""The PCM a WAV holds, counted as FFmpeg's WAV demuxer reads it: every ``data`` chunk."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from app.audio.refusals import AudioRefused, not_audio

MAX_WAV_CHUNKS = 1_024
_CANONICAL = struct.Struct("<4sI8sIHHIIHH")  # RIFF, size, WAVEfmt , 16, the PCM format


@dataclass(frozen=True, slots=True)
class Wav:
    sample_rate: int
    channels: int
    block_align: int
    pcm_bytes: int
    data_start: int  # where the samples of the first ``data`` chunk start
    data_chunks: int


def walk(file: BinaryIO, start: int, size: int) -> Wav:
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
    return Wav(
        sample_rate=rate,
        channels=channels,
        block_align=block_align,
        pcm_bytes=pcm,
        data_start=min(data),
        data_chunks=len(data),
    )


def declares_pcm16(head: bytes, size: int, rates: range, channels: range) -> bool:
    """Whether a WAV of ``size`` bytes starts with the canonical 16-bit PCM header, one
    FFmpeg reads only one way, so opening it with FFmpeg would say nothing more:

    - ``RIFF`` with a stated size within the file (no other allow-listed demuxer's probe
      can then outscore the WAV demuxer's: MOV's would need an atom name there), then
      ``WAVE`` and a 16-byte ``fmt `` chunk first;
    - format 1 (PCM) at 16 bits, a block of two bytes per channel, and a rate and a
      channel count this gateway accepts: FFmpeg reads it as ``pcm_s16le`` at that rate
      and with those channels (its prober may still find another codec in the samples:
      ``disguise`` asks that).

    Tests generate headers and check FFmpeg agrees with every one this accepts."""
    if len(head) < _CANONICAL.size:
        return False
    riff, stated, wave, fmt_size, tag, count, rate, _, align, bits = _CANONICAL.unpack_from(head)
    return (
        (riff, wave, fmt_size, tag, bits) == (b"RIFF", b"WAVEfmt ", 16, 1, 16)
        and 0 < stated <= size
        and count in channels
        and rate in rates
        and align == 2 * count
    )
