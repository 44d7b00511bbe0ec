"""Could FFmpeg read a PCM WAV's samples as a compressed codec? A fast, conservative answer.

FFmpeg's WAV demuxer does not take a 16-bit PCM header at its word: it hands the first
32 packets of the samples to the stream prober, which switches the stream to MP3, MP2,
AC-3, E-AC-3, AAC (ADTS or LOAS), DTS or TrueHD when their frames are found there (and
to what an S/PDIF burst carries, from the header). A tenant can hide 8 kbit/s MP3 behind
a 48 kHz stereo header: the bytes say a second, a provider's FFmpeg plays minutes.

Running that prober costs milliseconds a call. This module answers the same question in
a fraction of that by looking for what every one of those probers needs before it can
score high enough to switch: their sync words, and for the frame-chained formats a run
of consecutive frames, each starting where the one before says it ends. It asks for
less than any FFmpeg version does (shorter runs, anywhere in the probed window and a
packet beyond, no CRC), so it may say "maybe" where FFmpeg would not (the caller then
runs FFmpeg's own prober) but never "no" where FFmpeg would switch. Real recordings
almost never hold such runs, so they take the fast path.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from app.audio.container import id3v2_end

# FFmpeg's WAV demuxer probes at most 32 packets (and at most ``probesize`` bytes) of a
# PCM stream; a packet is about a tenth of a second of audio (FFmpeg 5 and later), or
# 4096 bytes (earlier). One packet more is looked at.
_PROBED_PACKETS = 32
_PROBESIZE = 5_000_000
_OLD_PACKET_BYTES = 4096

# Four-byte sync words, and how many of one group a prober needs before it may switch:
# DTS core (either byte order, then each 14-bit packing) and extension substream, at
# even offsets from where its buffer starts (it steps two bytes at a time; it needs more
# than three), TrueHD and MLP (one, after a chain of sub-frames from the start), and an
# S/PDIF (IEC 61937) burst preamble as read from the samples (two, one burst apart).
_SYNC_GROUPS = (
    ((0x7FFE8001, 0xFE7F0180), 4, True),
    ((0x1FFFE800,), 4, True),
    ((0xFF1F00E8,), 4, True),
    ((0x64582025,), 4, True),
    ((0xF8726FBA, 0xF8726FBB), 1, False),
    ((0x72F81F4E,), 2, False),
)

# Runs of frames that can make a prober switch (FFmpeg asks for at least 4 MPEG audio
# or AC-3 frames from the start, or 7, or more than 100-500 anywhere; 3 ADTS or LOAS
# frames from the start, or more than 100 anywhere): two from where the samples start,
# or a run this long anywhere, answers "maybe".
_RUN_ANYWHERE = {"mpeg_audio": 3, "ac3": 3, "adts": 40, "loas": 40}

_AC3_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640)
_MPEG_KBPS = {  # (MPEG-1?, layer) → kbit/s by bitrate index 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def probed_window(byte_rate: int, block_align: int) -> int:
    """How many bytes of a PCM stream FFmpeg's prober may see, and a packet more, for a
    stream of ``byte_rate`` bytes a second in blocks of ``block_align``."""
    samples = max(1, byte_rate // 10 // block_align)
    packet = max(block_align << (samples.bit_length() - 1), _OLD_PACKET_BYTES, block_align)
    return min((_PROBED_PACKETS + 1) * packet, _PROBESIZE + 2 * packet)


def may_be_disguised(samples: bytes) -> bool:
    """Whether FFmpeg's stream prober might read ``samples`` (the start of a PCM WAV's
    ``data``, ``probed_window`` bytes of it) as a compressed codec."""
    if len(samples) < 16:
        return False
    data = np.frombuffer(samples, dtype=np.uint8)
    # FFmpeg's prober reads past an ID3v2 tag at the start of what it probes; MPEG audio's
    # skips leading zeros too. Runs are counted from each of these.
    tag = id3v2_end(samples[:10])
    if _has_sync_words(samples, {0, tag % 2}):
        return True
    starts = {0, tag, _first_nonzero(data, 0), _first_nonzero(data, tag)}
    return any(
        _has_run(positions, sizes, data, _RUN_ANYWHERE[name], starts, preamble=name == "ac3")
        for name, positions, sizes in _frames(data)
    )


def _first_nonzero(data: np.ndarray, start: int) -> int:
    return start + int(np.argmax(data[start:] != 0)) if start < len(data) else start


def _has_sync_words(samples: bytes, even: set[int]) -> bool:
    """Whether enough of one group of sync words is there for its prober to switch
    (``even``: the parities of offsets a prober that steps two bytes may read)."""
    # Every 16-bit word as read little-endian, at even offsets, then at odd ones.
    halves = [
        np.frombuffer(samples, "<u2", (len(samples) - parity) // 2, parity) for parity in (0, 1)
    ]
    for group, needed, stepping in _SYNC_GROUPS:
        found = 0
        for parity, words in enumerate(halves):
            if stepping and parity not in even:
                continue
            for sync in group:
                following = words[1:][words[:-1] == _word(sync >> 16)]
                found += int(np.count_nonzero(following == _word(sync)))
        if found >= needed:
            return True
    return False


def _word(value: int) -> int:
    """The 16-bit big-endian ``value`` as a little-endian read of its bytes finds it."""
    value &= 0xFFFF
    return (value & 0xFF) << 8 | value >> 8


def _frames(data: np.ndarray):
    """(format, header positions, frame sizes) for every frame header that parses."""
    n = len(data) - 7  # a header starts at least 8 bytes before the end

    def at(offset: int) -> np.ndarray:  # byte ``offset`` of a header starting anywhere
        return data[offset : offset + n]

    def byte(where: np.ndarray, offset: int) -> np.ndarray:
        return data[where + offset].astype(np.int64)

    sync = at(0) == 0xFF
    # MPEG audio: FF, E2-FF (a version, a layer), a bitrate neither free nor invalid; the
    # table says the rest.
    where = np.flatnonzero(sync & (at(1) >= 0xE2) & ((at(2) - 0x10) < 0xE0))
    sizes = _mpeg_audio_sizes()[(byte(where, 1) << 8) | byte(where, 2)]
    yield "mpeg_audio", where[sizes > 0], sizes[sizes > 0]

    where = np.flatnonzero(sync & ((at(1) & 0xF6) == 0xF0))
    sizes = ((byte(where, 3) & 3) << 11) | (byte(where, 4) << 3) | (byte(where, 5) >> 5)
    yield "adts", where[sizes >= 7], sizes[sizes >= 7]

    where = np.flatnonzero((at(0) == 0x56) & (at(1) >= 0xE0))
    sizes = (((byte(where, 1) & 0x1F) << 8) | byte(where, 2)) + 3
    yield "loas", where[sizes >= 7], sizes[sizes >= 7]

    is_0b, is_77 = data == 0x0B, data == 0x77
    for first, second, swap in ((is_0b, is_77, 0), (is_77, is_0b, 1)):
        where = np.flatnonzero(first[:n] & second[1 : n + 1])
        # Header bytes 2-5 as the parser reads them (pairs swapped in a swapped stream).
        h2, h3, h4, h5 = (byte(where, i ^ swap) for i in (2, 3, 4, 5))
        bsid = h5 >> 3
        ac3 = _ac3_sizes()[np.minimum(h4 & 0x3F, 38), h4 >> 6]
        eac3 = np.where((h2 >> 6) != 3, ((((h2 & 7) << 8) | h3) + 1) * 2, 0)
        sizes = np.where(bsid <= 10, ac3, np.where(bsid <= 16, eac3, 0))
        yield "ac3", where[sizes >= 7], sizes[sizes >= 7]


def _has_run(
    positions: np.ndarray,
    sizes: np.ndarray,
    data: np.ndarray,
    frames: int,
    starts: set[int],
    preamble: bool,
) -> bool:
    """Whether two headers follow one another from one of ``starts`` (each where the
    last one ends), or ``frames`` of them anywhere. AC-3's prober also steps over a
    16-byte ``01 10`` preamble between frames, so a run may too."""
    if not len(positions):
        return False
    following = positions + sizes
    if preamble:
        inside = following + 1 < len(data)
        skip = np.zeros_like(inside)
        skip[inside] = (data[following[inside]] == 0x01) & (data[following[inside] + 1] == 0x10)
        following = np.where(skip, following + 16, following)
    found = np.minimum(np.searchsorted(positions, following), len(positions) - 1)
    after = np.where(positions[found] == following, found, -1)  # the next header's index
    current = np.flatnonzero(after >= 0)  # runs of two: real audio has few, or none
    if not len(current):
        return False
    if not starts.isdisjoint(positions[current].tolist()):
        return True
    for _ in range(frames - 2):
        current = after[current]
        current = current[after[current] >= 0]
        if not len(current):
            return False
    return bool(len(current))


@cache
def _mpeg_audio_sizes() -> np.ndarray:
    """Frame size by header bytes 1-2 (0: not a header FFmpeg's parser accepts)."""
    table = np.zeros(1 << 16, dtype=np.int64)
    for second in range(0xE0, 0x100):
        version, layer_bits = (second >> 3) & 3, (second >> 1) & 3
        if version == 1 or layer_bits == 0:
            continue
        layer, mpeg1 = 4 - layer_bits, version == 3
        for third in range(0x100):
            bitrate_index, rate_index, padding = third >> 4, (third >> 2) & 3, (third >> 1) & 1
            if bitrate_index in (0, 15) or rate_index == 3:
                continue
            rate = (44_100, 48_000, 32_000)[rate_index] >> (0 if mpeg1 else 1 if version else 2)
            bits = _MPEG_KBPS[(mpeg1, layer)][bitrate_index - 1] * 1000
            if layer == 1:
                size = (12 * bits // rate + padding) * 4
            elif layer == 2 or mpeg1:
                size = 144 * bits // rate + padding
            else:
                size = 72 * bits // rate + padding
            table[(second << 8) | third] = size
    return table


@cache
def _ac3_sizes() -> np.ndarray:
    """AC-3 frame size in bytes by frame-size code (row 38: invalid) and sample rate."""
    table = np.zeros((39, 4), dtype=np.int64)
    for code in range(38):
        kbps = _AC3_KBPS[code >> 1]
        words = (kbps * 2, kbps * 1000 * 1536 // 44_100 // 16 + (code & 1), kbps * 3)
        table[code, :3] = [2 * w for w in words]
    return table
