"""FFmpeg reading an upload in a worker process of its own, under a memory cap.

Demuxing and decoding an arbitrary container is where a hostile file spends memory: a
33 KB MP4 whose index claims 2**31 samples a chunk has FFmpeg allocate gigabytes while
opening it. So that work runs in worker processes (``app.runtime.workers``), one per probe thread,
started at its first such upload and replaced when it dies or runs past its time; the
gateway's own memory never holds what FFmpeg builds. The upload reaches the worker by
value while it is in memory (at most a mebibyte) and by path once spooled to disk (this
process's descriptor, through ``/proc``).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from app.audio.refusals import AudioRefused, not_audio, too_slow
from app.runtime.workers import Worker

logger = logging.getLogger("earmark")
T = TypeVar("T")
_GRACE_SECONDS = 2.0  # beyond the work's own deadline, before its worker is killed


def _source(file: BinaryIO) -> str | bytes:
    """How a worker can read ``file``: its bytes while it is in memory (asking a spool for
    its descriptor would write it to disk first), else a path to the same open file."""
    if not getattr(file, "_rolled", True) or not hasattr(file, "fileno"):
        file.seek(0)
        return file.read()
    try:
        return f"/proc/{os.getpid()}/fd/{file.fileno()}"
    except (OSError, io.UnsupportedOperation):  # a BytesIO, say
        file.seek(0)
        return file.read()


def _run(job: tuple[Callable[..., Any], str | bytes, tuple[Any, ...]]) -> tuple[str, Any]:
    """In the worker: ``function(the upload, *args)``, and how it ended."""
    function, source, args = job
    try:  # not the upload's fault if this fails: the gateway's, so it says so
        file = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)  # noqa: SIM115
    except OSError as error:
        return "broken", f"the probe worker cannot read the upload: {error}"
    try:
        with file:
            return "ok", function(file, *args)
    except AudioRefused as refused:
        return "refused", (refused.message, refused.code)
    except MemoryError:
        return "memory", None
    except Exception:  # the upload is the only input: its fault, never the worker's end
        logger.exception("reading an upload failed unexpectedly")
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

    def run(self, seconds: float, function: Callable[..., T], file: BinaryIO, *args: Any) -> T:
        """``function(file, *args)`` in this thread's worker (blocking; it gets its own
        handle on the upload): its result, or the ``AudioRefused`` it raised; too slow or
        over memory is a refusal too, and the worker is replaced."""
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = Worker(_run, self.memory_bytes)
            with self._lock:
                self._workers.add(worker)
        try:
            kind, value = worker.call((function, _source(file), args), seconds + _GRACE_SECONDS)
        except (TimeoutError, EOFError, OSError) as error:
            self._retire(worker)
            raise too_slow() if isinstance(error, TimeoutError) else over_memory() from None
        if kind == "ok":
            return value
        if kind == "memory":  # its heap may be near the cap: a fresh one for the next
            self._retire(worker)
            raise over_memory()
        if kind == "broken":
            raise RuntimeError(value)
        raise AudioRefused(*value)

    def _retire(self, worker: Worker) -> None:
        self._local.worker = None
        with self._lock:
            self._workers.discard(worker)
        worker.kill()

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, set()
        for worker in workers:
            worker.kill()
