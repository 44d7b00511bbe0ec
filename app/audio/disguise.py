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

The walks over the bytes are in C (``_scan.c``: a pass for the sync words, one for the
frame headers and their runs); what they look for, and the tables, are here.
"""

from __future__ import annotations

from array import array
from functools import cache

from app.audio import _scan
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
_SYNC_WORDS = tuple(sync for group, _, _ in _SYNC_GROUPS for sync in group)  # _scan's order

# Runs of frames that can make a prober switch (FFmpeg asks for at least 4 MPEG audio
# or AC-3 frames from the start, or 7, or more than 100-500 anywhere; 3 ADTS or LOAS
# frames from the start, or more than 100 anywhere): two from where the samples start,
# or a run this long anywhere, answers "maybe". In _scan.c's order of formats: MPEG
# audio, ADTS, LOAS, AC-3, byte-swapped AC-3.
_RUN_ANYWHERE = (3, 40, 40, 3, 3)

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
    # FFmpeg's prober reads past an ID3v2 tag at the start of what it probes; MPEG audio's
    # skips leading zeros too. Runs are counted from each of these.
    tag = id3v2_end(samples[:10])
    if _has_sync_words(samples, {0, tag % 2}):
        return True
    starts = (0, tag, _scan.first_nonzero(samples, 0), _scan.first_nonzero(samples, tag))
    # MPEG audio, ADTS and LOAS headers by their parsers' rules (the sizes from the MPEG
    # table, ADTS's 13-bit and LOAS's 13-bit + 3 lengths, at least 7 bytes); AC-3 at 0B 77
    # (77 0B byte-swapped), E-AC-3's size for bsid 11-16; a run may step over AC-3's
    # 16-byte 01 10 preamble between frames.
    return _scan.chained(samples, _mpeg_audio_sizes(), _ac3_sizes(), starts, _RUN_ANYWHERE)


def _has_sync_words(samples: bytes, even: set[int]) -> bool:
    """Whether enough of one group of sync words is there for its prober to switch
    (``even``: the parities of offsets a prober that steps two bytes may read)."""
    counts = _scan.sync_counts(samples, _SYNC_WORDS)
    found = {
        (sync, parity): counts[parity * len(_SYNC_WORDS) + n]
        for parity in (0, 1)
        for n, sync in enumerate(_SYNC_WORDS)
    }
    for group, needed, stepping in _SYNC_GROUPS:
        parities = even if stepping else (0, 1)
        if sum(found[sync, parity] for sync in group for parity in parities) >= needed:
            return True
    return False


@cache
def _mpeg_audio_sizes() -> array[int]:
    """Frame size by header bytes 1-2 (0: not a header FFmpeg's parser accepts)."""
    table = array("q", bytes(8 << 16))
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
def _ac3_sizes() -> array[int]:
    """AC-3 frame size in bytes by frame-size code (row 38: invalid) and sample rate code
    (column 3: invalid), row by row."""
    table = array("q", bytes(8 * 39 * 4))
    for code in range(38):
        kbps = _AC3_KBPS[code >> 1]
        words = (kbps * 2, kbps * 1000 * 1536 // 44_100 // 16 + (code & 1), kbps * 3)
        table[code * 4 : code * 4 + 3] = array("q", [2 * w for w in words])
    return table
