"""The ``local`` provider kind: transcription on this machine, answered as OpenAI would.

The gateway forwards to it exactly as to a remote provider and gets the same kind of
answer back, so metering, fallbacks and response shaping do not know the difference. The work
(decoding and recognition, ``local_engine.py``) runs in worker processes of its own,
started at the first call: a long file never stalls the event loop; at most ``workers``
files are transcribed at once per gateway process while the rest wait their turn, still
spooled; each worker's memory is capped. A call that times out or is abandoned kills its
worker (a decode cannot be interrupted any other way) and the next call starts a fresh
one; closing the provider kills them all, and a worker dies with its gateway.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from app.config import ProviderConfig
from app.providers import AttemptFailed, UpstreamRequest, UpstreamResponse, local_engine
from app.runtime.executors import FairPool
from app.runtime.workers import Worker

FORMATS = frozenset({"json", "text", "srt", "verbose_json", "vtt"})
TASKS = {"transcriptions": "transcribe", "translations": "translate"}


class _Workers:
    """The worker processes of one local provider."""

    def __init__(self, size: int, memory_bytes: int | None) -> None:
        self._memory_bytes = memory_bytes
        self._turns = asyncio.Semaphore(size)
        self._idle: list[Worker] = []
        self._alive: set[Worker] = set()
        # One thread per worker waits on its pipe; the event loop never blocks on one.
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="earmark-local")

    async def run(self, job: dict[str, Any], seconds: float) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        async with self._turns:
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                # Started from the event loop's thread, whose end (with the gateway's) the
                # worker's parent-death signal is tied to; starting one takes milliseconds.
                worker = Worker(local_engine.handle, self._memory_bytes)
                self._alive.add(worker)
            try:
                answer = await loop.run_in_executor(self._threads, worker.call, job, seconds)
            except BaseException:
                # Timed out, died, or the caller left: the decode may still be running, so
                # the process goes, and with it the CPU it was spending.
                self._alive.discard(worker)
                await asyncio.shield(loop.run_in_executor(self._threads, worker.kill))
                raise
            self._idle.append(worker)
            return answer

    def close(self) -> None:
        for worker in self._alive:
            worker.kill()
        self._alive.clear()
        self._idle.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)


class LocalProvider:
    """One local provider: its worker processes, and answers shaped as OpenAI's."""

    def __init__(self, name: str, config: ProviderConfig, files: FairPool) -> None:
        self.name = name
        self.config = config
        self._files = files
        memory = config.memory_limit_mb * (1 << 20) if config.memory_limit_mb else None
        self._workers = _Workers(config.workers, memory)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        route, fields, upload = request.route, request.fields, request.upload
        options = {name: values[-1] for name, values in fields.items() if values}
        response_format = options.get("response_format", "json")
        if response_format not in FORMATS:
            return _error(
                400,
                f"response_format {response_format!r} is not supported by "
                f"{route.name}; use one of {', '.join(sorted(FORMATS))}.",
                "response_format",
            )
        upload.file.seek(0)
        audio = (
            upload.file.read()
            if upload.in_memory
            else await self._files.run(request.owner, upload.file.read)
        )
        job = {
            "engine": route.config.engine,
            "model_path": route.config.model_path,
            "audio": audio,
            "language": options.get("language") or None,
            "prompt": options.get("prompt") or None,
            "task": TASKS[request.operation],
            "max_seconds": route.audio_limits.max_seconds,
        }
        request.progress.bytes_sent = len(audio)
        del audio
        timeout = self.config.timeout_seconds
        # This machine bills nothing: a worker killed mid-call did no billable work.
        try:
            outcome, value = await self._workers.run(job, timeout)
        except TimeoutError:
            raise AttemptFailed(
                f"{self.name} did not finish within {timeout:g} s", kind="timeout", reached=False
            ) from None
        except (EOFError, OSError):
            raise AttemptFailed(
                f"{self.name}'s worker process died", kind="worker_died", reached=False
            ) from None
        if outcome != "ok":
            return _error(400, f"{route.name}: {value}", "file")
        granularities = fields.get("timestamp_granularities[]", []) + fields.get(
            "timestamp_granularities", []
        )
        return render(value, response_format, TASKS[request.operation], "word" in granularities)

    async def close(self) -> None:
        self._workers.close()


def _error(status: int, message: str, param: str | None) -> UpstreamResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return UpstreamResponse(status, "application/json", body=msgspec.json.encode(body))


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02}:{minutes:02}:{secs:02}{separator}{millis:03}"


def render(
    transcript: dict[str, Any], response_format: str, task: str, words: bool
) -> UpstreamResponse:
    """The transcript in one of OpenAI's response formats, with whisper-1's duration usage."""
    segments = transcript["segments"]
    text = " ".join(segment["text"] for segment in segments)
    usage = {"type": "duration", "seconds": transcript["duration"]}
    if response_format == "text":
        return UpstreamResponse(200, "text/plain; charset=utf-8", body=f"{text}\n".encode())
    if response_format in ("srt", "vtt"):
        separator = "," if response_format == "srt" else "."
        cues = [
            f"{_timestamp(s['start'], separator)} --> {_timestamp(s['end'], separator)}\n"
            f"{s['text']}\n"
            for s in segments
        ]
        if response_format == "srt":
            body = "\n".join(f"{n}\n{cue}" for n, cue in enumerate(cues, 1))
        else:
            body = "WEBVTT\n\n" + "\n".join(cues)
        return UpstreamResponse(200, "text/plain; charset=utf-8", body=body.encode())
    if response_format == "json":
        return _json({"text": text, "usage": usage})
    verbose: dict[str, Any] = {
        "task": task,
        "language": transcript["language"],
        "duration": transcript["duration"],
        "text": text,
        "segments": [
            {
                "id": n,
                "seek": 0,
                "start": s["start"],
                "end": s["end"],
                "text": s["text"],
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for n, s in enumerate(segments)
        ],
        "usage": usage,
    }
    if words:
        verbose["words"] = [word for s in segments for word in s["words"]]
    return _json(verbose)


def _json(body: dict[str, Any]) -> UpstreamResponse:
    return UpstreamResponse(200, "application/json", body=msgspec.json.encode(body))
