"""Speech recognition on this machine, run inside the local provider's worker processes.

``transcribe`` decodes the upload (opened like every upload, by ``audio.open_container``)
to 16 kHz mono PCM as the recogniser reads it, so memory holds a few frames, not the
whole decoded file; it recognises with PocketSphinx (its English model ships inside the
PyPI package: no download) or faster-whisper (the operator's model directory or name,
which needs the whole signal). ``handle`` answers one job in a worker process
(``app.runtime.workers``: a memory cap, dying with the gateway that started it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

SAMPLE_RATE = 16_000
_FRAMES_PER_SECOND = 100  # PocketSphinx's frame rate
_FILLERS = frozenset({"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]"})
_engines: dict[tuple[str, str | None], Any] = {}  # loaded once per worker process


class EngineError(Exception):
    """The audio cannot be transcribed (unreadable, too long, or a language the engine
    lacks); the message is the tenant's to read."""


class _Pcm:
    """The upload's first audio stream as 16 kHz mono 16-bit PCM, decoded as it is read.
    Packets a decoder cannot read are skipped, as FFmpeg's own tools do."""

    def __init__(self, container: Any, max_seconds: int) -> None:
        self._chunks = self._decode(container)
        self._pending = bytearray()
        self._max_samples = max_seconds * SAMPLE_RATE
        self.samples = 0

    @staticmethod
    def _decode(container: Any) -> Iterator[bytes]:
        import av

        stream = container.streams.audio[0]
        resampler, source = None, None
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            for frame in frames:
                layout = (frame.format.name, frame.layout.name, frame.sample_rate)
                if layout != source:  # a stream may change its rate midway: so may we
                    if resampler is not None:
                        yield from _pcm(resampler.resample(None))
                    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                    source = layout
                yield from _pcm(resampler.resample(frame))
        if resampler is not None:
            yield from _pcm(resampler.resample(None))

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._pending) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending += chunk
            self.samples += len(chunk) // 2
            if self.samples > self._max_samples:
                raise EngineError(
                    f"the audio is longer than {self._max_samples // SAMPLE_RATE} seconds"
                )
        size = len(self._pending) if size < 0 else size
        out = bytes(self._pending[:size])
        del self._pending[:size]
        return out


def _pcm(frames: list[Any]) -> Iterator[bytes]:
    for out in frames:
        yield bytes(out.planes[0])[: out.samples * 2]


def _pocketsphinx(pcm: _Pcm, language: str | None) -> dict[str, Any]:
    from pocketsphinx import Decoder, Segmenter

    if language not in (None, "en"):
        raise EngineError(f"this model recognises English only, not {language!r}")
    decoder = _engines.get(("pocketsphinx", None))
    if decoder is None:
        decoder = _engines["pocketsphinx", None] = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    segments = []
    # Voice activity splits the audio into utterances: one segment each, decoded alone.
    for speech in Segmenter(sample_rate=SAMPLE_RATE).segment(pcm):
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
    pcm.read()  # whatever the segmenter left: the duration counts all of it
    return {"language": "english", "segments": segments}


def _faster_whisper(
    pcm: _Pcm, model_path: str | None, language: str | None, prompt: str | None, task: str
) -> dict[str, Any]:
    import numpy
    from faster_whisper import WhisperModel

    model = _engines.get(("faster-whisper", model_path))
    if model is None:
        model = WhisperModel(model_path or "base", device="cpu", compute_type="int8")
        _engines["faster-whisper", model_path] = model
    samples = numpy.frombuffer(pcm.read(), dtype=numpy.int16).astype(numpy.float32) / 32768.0
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
    max_seconds: int = 10_800,
) -> dict[str, Any]:
    """The transcript: language, duration (seconds) and segments with their words."""
    from app.audio.container import open_container, sniff
    from app.audio.refusals import AudioRefused

    file = io.BytesIO(audio)
    try:
        container, _ = sniff(file)
        with open_container(file, container) as opened:
            if not opened.streams.audio:
                raise EngineError("the upload holds no audio stream")
            pcm = _Pcm(opened, max_seconds)
            if engine == "pocketsphinx":
                result = _pocketsphinx(pcm, language)  # English only: a translation is the same
            else:
                result = _faster_whisper(pcm, model_path, language, prompt, task)
    except AudioRefused as refused:
        raise EngineError(refused.message) from None
    result["duration"] = round(pcm.samples / SAMPLE_RATE, 3)
    return result


def handle(job: dict[str, Any]) -> tuple[str, Any]:
    """A worker's answer to one job (``app.runtime.workers``): ("ok", transcript) or ("refused", a
    message for the tenant)."""
    try:
        return ("ok", transcribe(**job))
    except EngineError as error:
        return ("refused", f"the audio could not be transcribed: {error}")
    except MemoryError:
        return ("refused", "the audio needs more memory to transcribe than allowed")
    except Exception:  # the upload's fault (it is the only input): never the worker's end
        return ("refused", "the audio could not be decoded")
