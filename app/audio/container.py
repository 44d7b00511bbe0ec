"""Which demuxer may open an upload, and opening it with nothing else allowed.

The demuxer is the one the upload's first bytes name from an allow-list (never FFmpeg's
own guess, which also knows playlists, concat lists and SDP sessions), with FFmpeg's
``format_whitelist`` saying the same, no protocol, and an ``io_open`` that refuses any
nested file or URL the upload names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import av

from app.audio.refusals import PROBE_SECONDS, AudioRefused, not_audio

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
_FORMAT_WHITELIST = ",".join(sorted(set(DEMUXERS.values())))
_MAX_ID3_TAGS = 8


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


def id3v2_end(head: bytes) -> int:
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
    """The container its first bytes say (a key of DEMUXERS) and where it starts, past any
    ID3v2 tags. FFmpeg's own prober then has to agree (``open_container``)."""
    file.seek(0)
    head, start = file.read(16), 0
    for _ in range(_MAX_ID3_TAGS):
        skip = id3v2_end(head)
        if not skip:
            break
        start += skip
        file.seek(start)
        head = file.read(16)
    magic = head[:4]
    if magic in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        file.seek(start)
        if _reads_as_act(file.read(512)):
            raise AudioRefused(
                "The file starts as WAV but FFmpeg reads it as ACT (G.729 voice): send plain "
                "audio.",
                "ambiguous_container",
            )
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


def _reads_as_act(head: bytes) -> bool:
    """Whether FFmpeg's full prober (a provider's, with every demuxer) reads a RIFF/WAVE
    start as ACT rather than WAV: its probe scores above the WAV demuxer's on these bytes
    (``libavformat/act.c``), and G.729 at 8 kbit/s plays 16 times as long as the 8 kHz
    PCM header says. This gateway's own FFmpeg may not open ACT, so it must be told."""
    return (
        len(head) == 512
        and head[:4] == b"RIFF"
        and head[16:20] == b"\x10\0\0\0"
        and not any(head[44:256])
        and head[256] == 0x84
        and not any(head[264:512])
    )


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> None:
    """FFmpeg asks this to open any file or URL an upload names: never."""
    raise PermissionError("an upload may not open other files")


class _Named:
    """The upload under the name it is forwarded by: FFmpeg's prober weighs the extension,
    as it will at the provider."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        self._file = file
        self.name = name
        self.read = file.read
        self.seek = file.seek
        self.tell = file.tell


@contextmanager
def open_container(
    file: BinaryIO, container: str, timeout: float = PROBE_SECONDS, probe_streams: bool = True
) -> Iterator[av.container.InputContainer]:
    """The upload opened as FFmpeg's own prober (what a provider runs) reads it, limited to
    the allowed demuxers, with no protocol and no nested file. It must be the container
    its first bytes say: a file that reads as one format to this gateway and another to a
    provider is refused. FFmpeg's failures are ``not_audio``.

    Without ``probe_streams`` FFmpeg reads the headers and probes a stream's codec from
    its first packet only (a PCM WAV's later packets are then the caller's to check)."""
    file.seek(0)
    options = {"format_whitelist": _FORMAT_WHITELIST, "protocol_whitelist": "none"}
    if not probe_streams:
        options["probesize"] = "32"  # FFmpeg's least: one packet
    try:
        opened = av.open(
            _Named(file, f"audio.{EXTENSIONS[container][0]}"),
            "r",
            container_options=options,
            metadata_errors="replace",
            timeout=timeout,
            io_open=_refuse_nested_open,
        )
    except (av.FFmpegError, MemoryError, PermissionError, UnicodeError, ValueError, IndexError):
        raise not_audio() from None
    try:
        if DEMUXERS[container] not in opened.format.name.split(","):
            raise AudioRefused(
                f"The file starts as {container} but FFmpeg reads it as "
                f"{opened.format.name.split(',')[0]}: send plain audio.",
                "ambiguous_container",
            )
        yield opened
    finally:
        opened.close()
