"""FFmpeg reading an upload in a worker process of its own, under a memory cap.

Demuxing and decoding an arbitrary container is where a hostile file spends memory: a
33 KB MP4 whose index claims 2**31 samples a chunk has FFmpeg allocate gigabytes while
opening it. So that work runs in worker processes (``app.workers``), one per probe thread,
started at its first such upload and replaced when it dies or runs past its time; the
gateway's own memory never holds what FFmpeg builds. The upload reaches the worker by
path when it is spooled to disk (this process's descriptor, through ``/proc``) and by
value when it is in memory (at most a mebibyte).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from app.audio.refusals import AudioRefused, not_audio, too_slow
from app.workers import Worker

T = TypeVar("T")
_GRACE_SECONDS = 2.0  # beyond the work's own deadline, before its worker is killed


def source(file: BinaryIO) -> str | bytes:
    """How a worker can read ``file``: a path to the same open file, or its bytes."""
    try:
        return f"/proc/{os.getpid()}/fd/{file.fileno()}"
    except (AttributeError, OSError, io.UnsupportedOperation):
        file.seek(0)
        return file.read()


def opened(source: str | bytes) -> BinaryIO:
    """In the worker: the upload ``source`` names."""
    return open(source, "rb") if isinstance(source, str) else io.BytesIO(source)


def _run(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> tuple[str, Any]:
    function, args = job
    try:
        return "ok", function(*args)
    except AudioRefused as refused:
        return "refused", (refused.message, refused.code)
    except MemoryError:
        return "memory", None
    except Exception:  # the upload is the only input: its fault, never the worker's end
        return "refused", (not_audio().message, not_audio().code)


def over_memory() -> AudioRefused:
    return AudioRefused(
        "The audio needs more memory to read than this gateway allows; send a simpler file.",
        "audio_too_complex",
    )


class Sandbox:
    """The probe threads' worker processes."""

    def __init__(self, memory_bytes: int | None) -> None:
        self.memory_bytes = memory_bytes
        self._local = threading.local()
        self._workers: set[Worker] = set()
        self._lock = threading.Lock()

    def run(self, seconds: float, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in this thread's worker (blocking): its result, or the
        ``AudioRefused`` it raised; too slow or over memory is a refusal too."""
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = Worker(_run, self.memory_bytes)
            with self._lock:
                self._workers.add(worker)
        try:
            kind, value = worker.call((function, args), seconds + _GRACE_SECONDS)
        except (TimeoutError, EOFError, OSError) as error:
            self._local.worker = None
            with self._lock:
                self._workers.discard(worker)
            worker.kill()
            raise too_slow() if isinstance(error, TimeoutError) else over_memory() from None
        if kind == "ok":
            return value
        raise over_memory() if kind == "memory" else AudioRefused(*value)

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, set()
        for worker in workers:
            worker.kill()
