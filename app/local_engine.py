"""Speech recognition on this machine, run inside the local provider's worker processes.

``transcribe`` decodes any accepted audio format to 16 kHz mono PCM (FFmpeg through
PyAV) and recognises it with PocketSphinx (its English model ships inside the PyPI
package: no download) or faster-whisper (the operator's model directory or name). It
returns plain data, so it crosses the process boundary cheaply; the gateway side
(``local_provider.py``) shapes it into OpenAI's response formats.
"""

from __future__ import annotations

import io
from typing import Any

SAMPLE_RATE = 16_000
_FRAMES_PER_SECOND = 100  # PocketSphinx's frame rate
_FILLERS = frozenset({"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]"})
_engines: dict[tuple[str, str | None], Any] = {}  # loaded once per worker process


class EngineError(Exception):
    """The audio cannot be transcribed (unreadable, or a language the engine lacks)."""


def decode_pcm(audio: bytes) -> bytes:
    """16 kHz mono signed 16-bit PCM of the first audio stream."""
    import av

    pcm = bytearray()
    try:
        with av.open(io.BytesIO(audio)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pcm += bytes(out.planes[0])[: out.samples * 2]
            for out in resampler.resample(None):
                pcm += bytes(out.planes[0])[: out.samples * 2]
    except (av.error.FFmpegError, IndexError, ValueError) as error:
        raise EngineError(f"the audio could not be decoded: {error}") from None
    return bytes(pcm)


def _pocketsphinx(pcm: bytes, language: str | None) -> dict[str, Any]:
    from pocketsphinx import Decoder, Segmenter

    if language not in (None, "en"):
        raise EngineError(f"this model recognises English only, not {language!r}")
    decoder = _engines.get(("pocketsphinx", None))
    if decoder is None:
        decoder = _engines["pocketsphinx", None] = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    segments = []
    # Voice activity splits the audio into utterances: one segment each, decoded alone.
    for speech in Segmenter(sample_rate=SAMPLE_RATE).segment(io.BytesIO(pcm)):
        decoder.start_utt()
        decoder.process_raw(speech.pcm, full_utt=True)
        decoder.end_utt()
        words = [
            {
                "word": seg.word.split("(")[0],  # "probably(2)": a pronunciation variant
                "start": round(speech.start_time + seg.start_frame / _FRAMES_PER_SECOND, 2),
                "end": round(speech.start_time + (seg.end_frame + 1) / _FRAMES_PER_SECOND, 2),
            }
            for seg in decoder.seg()
            if seg.word not in _FILLERS
        ]
        if words:
            segments.append(
                {
                    "start": round(speech.start_time, 2),
                    "end": round(speech.end_time, 2),
                    "text": " ".join(word["word"] for word in words),
                    "words": words,
                }
            )
    return {"language": "english", "segments": segments}


def _faster_whisper(
    pcm: bytes, model_path: str | None, language: str | None, prompt: str | None, task: str
) -> dict[str, Any]:
    import numpy
    from faster_whisper import WhisperModel

    model = _engines.get(("faster-whisper", model_path))
    if model is None:
        model = WhisperModel(model_path or "base", device="cpu", compute_type="int8")
        _engines["faster-whisper", model_path] = model
    samples = numpy.frombuffer(pcm, dtype=numpy.int16).astype(numpy.float32) / 32768.0
    found, info = model.transcribe(
        samples, language=language, initial_prompt=prompt, task=task, word_timestamps=True
    )
    segments = [
        {
            "start": round(segment.start, 2),
            "end": round(segment.end, 2),
            "text": segment.text.strip(),
            "words": [
                {
                    "word": word.word.strip(),
                    "start": round(word.start, 2),
                    "end": round(word.end, 2),
                }
                for word in segment.words or []
            ],
        }
        for segment in found
    ]
    return {"language": info.language, "segments": segments}


def transcribe(
    engine: str,
    model_path: str | None,
    audio: bytes,
    *,
    language: str | None = None,
    prompt: str | None = None,
    task: str = "transcribe",
) -> dict[str, Any]:
    """The transcript: language, duration (seconds) and segments with their words."""
    pcm = decode_pcm(audio)
    if engine == "pocketsphinx":
        result = _pocketsphinx(pcm, language)  # English only: a translation is the transcript
    else:
        result = _faster_whisper(pcm, model_path, language, prompt, task)
    result["duration"] = round(len(pcm) / 2 / SAMPLE_RATE, 3)
    return result
