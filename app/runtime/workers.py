"""Worker processes for work on untrusted bytes: FFmpeg reading an upload, an engine
transcribing one.

A worker is a spawned process (forking one that runs an event loop and threads is
unsafe) whose address space is capped, which ignores Ctrl-C (its gateway decides when it
stops) and which the kernel kills when the thread that started it ends, so a gateway
killed by ``kill -9`` leaves none behind. It answers jobs from a pipe one at a time with
``handle(job)``; what that raises is the upload's fault, never the worker's end.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import resource
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_CONTEXT = multiprocessing.get_context("spawn")
_PR_SET_PDEATHSIG = 1


class Worker:
    """One worker process, from the side of the thread that started it."""

    def __init__(self, handle: Callable[[Any], Any], memory_bytes: int | None) -> None:
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(
            target=_serve, args=(child, handle, memory_bytes), daemon=True
        )
        self.process.start()
        child.close()

    def call(self, job: Any, timeout: float) -> Any:
        """Blocking: send a job and wait for its answer; TimeoutError, or EOFError if the
        process died (killed by its memory cap, say)."""
        self.conn.send(job)
        if not self.conn.poll(timeout):
            raise TimeoutError
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def _serve(conn: Connection, handle: Callable[[Any], Any], memory_bytes: int | None) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        answer = handle(job)
        del job
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
