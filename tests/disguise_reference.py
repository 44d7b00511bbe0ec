"""The disguise check as it was written in NumPy, before its byte walks moved to C
(``app/audio/_scan.c``): the oracle ``tests/test_audio.py`` holds the compiled kernel to,
input by input. Its answers were checked against FFmpeg's own prober by the same tests
(see ``app/audio/disguise.py`` for what is looked for and why)."""

from __future__ import annotations

import numpy as np

from app.audio import disguise
from app.audio.container import id3v2_end

_SYNC_GROUPS = disguise._SYNC_GROUPS
_FORMATS = ("mpeg_audio", "adts", "loas", "ac3")  # disguise._RUN_ANYWHERE's order
_RUN_ANYWHERE = dict(zip(_FORMATS, disguise._RUN_ANYWHERE, strict=False))


def _mpeg_audio_sizes() -> np.ndarray:
    return np.frombuffer(disguise._mpeg_audio_sizes(), dtype=np.int64)


def _ac3_sizes() -> np.ndarray:
    return np.frombuffer(disguise._ac3_sizes(), dtype=np.int64).reshape(39, 4)


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
