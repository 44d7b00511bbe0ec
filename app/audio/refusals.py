"""The 400s an upload can earn, worded for the tenant: what was wrong and which limit it
met. What FFmpeg itself said (paths, offsets, error classes) never goes back."""

from __future__ import annotations

from fractions import Fraction

from app.errors import InvalidRequest

ACCEPTED = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"
ACCEPTED_CODECS = "PCM, FLAC, MP3, MP2, AAC, Opus, Vorbis"
PROBE_SECONDS = 10.0  # wall-clock budget for opening and reading one upload


class AudioRefused(InvalidRequest):
    """The upload cannot be metered: a 400 on `file`."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, param="file", code=code)


def not_audio() -> AudioRefused:
    return AudioRefused(
        f"The uploaded file is not audio this gateway can read. Supported formats: {ACCEPTED}.",
        "invalid_audio",
    )


def too_slow() -> AudioRefused:
    return AudioRefused(
        f"The audio could not be read within {PROBE_SECONDS:g} s; send a simpler file.",
        "audio_too_complex",
    )


def too_long(seconds: Fraction, max_seconds: int) -> AudioRefused:
    return AudioRefused(
        f"The audio plays for more than {max_seconds} seconds "
        f"({float(seconds) / 3600:.2f} h counted so far); the limit for this model is "
        f"{max_seconds} seconds (max_audio_seconds).",
        "audio_too_long",
    )
