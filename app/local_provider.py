"""The ``local`` provider kind: transcription on this machine, answered as OpenAI would.

The gateway forwards to it exactly as to a remote provider and gets an ``httpx.Response``
back, so metering, fallbacks and response shaping do not know the difference. The work
(decoding and recognition, ``local_engine.py``) runs in a bounded pool of worker
processes, created at the first call: a long file never stalls the event loop, and at
most ``workers`` files are decoded at once per gateway process; the rest wait their turn,
still spooled, so memory holds at most ``workers`` uploads whatever the queue's length.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from functools import partial
from typing import Any

import httpx
import msgspec

from app import local_engine
from app.catalog import Route
from app.providers import Upload, UpstreamError, UpstreamTimeout

FORMATS = frozenset({"json", "text", "srt", "verbose_json", "vtt"})
TASKS = {"transcriptions": "transcribe", "translations": "translate"}


class LocalProvider:
    """One process pool per local provider, shared by its models."""

    def __init__(self) -> None:
        self._pools: dict[str, ProcessPoolExecutor] = {}
        self._turns: dict[str, asyncio.Semaphore] = {}

    def _turn(self, route: Route) -> asyncio.Semaphore:
        turn = self._turns.get(route.provider_name)
        if turn is None:
            turn = self._turns[route.provider_name] = asyncio.Semaphore(route.provider.workers)
        return turn

    def _pool(self, route: Route) -> ProcessPoolExecutor:
        pool = self._pools.get(route.provider_name)
        if pool is None:
            # spawn: forking a process that runs an event loop and threads is unsafe.
            pool = ProcessPoolExecutor(
                max_workers=route.provider.workers, mp_context=multiprocessing.get_context("spawn")
            )
            self._pools[route.provider_name] = pool
        return pool

    async def send(
        self, route: Route, endpoint: str, fields: dict[str, list[str]], upload: Upload
    ) -> httpx.Response:
        options = {name: values[-1] for name, values in fields.items() if values}
        response_format = options.get("response_format", "json")
        if response_format not in FORMATS:
            return _error(
                400,
                f"response_format {response_format!r} is not supported by "
                f"{route.name}; use one of {', '.join(sorted(FORMATS))}.",
                "response_format",
            )
        async with self._turn(route):
            transcript = await self._transcribe(route, endpoint, options, upload)
        if isinstance(transcript, httpx.Response):
            return transcript
        granularities = fields.get("timestamp_granularities[]", []) + fields.get(
            "timestamp_granularities", []
        )
        return render(transcript, response_format, TASKS[endpoint], "word" in granularities)

    async def _transcribe(
        self, route: Route, endpoint: str, options: dict[str, str], upload: Upload
    ) -> dict[str, Any] | httpx.Response:
        """Read the upload only now that a worker is free for it, and run the engine."""
        upload.file.seek(0)
        audio = (
            upload.file.read() if upload.in_memory else await asyncio.to_thread(upload.file.read)
        )
        work = partial(
            local_engine.transcribe,
            route.config.engine,
            route.config.model_path,
            audio,
            language=options.get("language") or None,
            prompt=options.get("prompt") or None,
            task=TASKS[endpoint],
        )
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool(route), work), route.provider.timeout_seconds
            )
        except local_engine.EngineError as error:
            return _error(400, str(error), "file")
        except TimeoutError:
            raise UpstreamTimeout(
                f"{route.provider_name} did not finish within "
                f"{route.provider.timeout_seconds:g} s.",
                code="upstream_timeout",
            ) from None
        except BrokenExecutor:
            self._pools.pop(route.provider_name, None)  # the next call starts a new pool
            raise UpstreamError(
                f"{route.provider_name}'s worker process died.", code="upstream_unreachable"
            ) from None

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()


def _error(status: int, message: str, param: str | None) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param}}
    return httpx.Response(status, json=body)


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02}:{minutes:02}:{secs:02}{separator}{millis:03}"


def render(
    transcript: dict[str, Any], response_format: str, task: str, words: bool
) -> httpx.Response:
    """The transcript in one of OpenAI's response formats, with whisper-1's duration usage."""
    segments = transcript["segments"]
    text = " ".join(segment["text"] for segment in segments)
    usage = {"type": "duration", "seconds": transcript["duration"]}
    if response_format == "text":
        return httpx.Response(200, text=f"{text}\n")
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
        return httpx.Response(200, text=body)
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


def _json(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(
        200, content=msgspec.json.encode(body), headers={"content-type": "application/json"}
    )
