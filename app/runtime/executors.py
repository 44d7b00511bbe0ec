"""Bounded thread pools, one per kind of blocking work, fair between the callers they serve.

Audio probing, password hashing and reads of spooled uploads each get their own pool, so
one kind cannot starve another (in Python's shared default pool, sixteen failing sign-ins
delayed every tenant's audio). Within a pool, each owner (a tenant, or a source address)
queues on its own and threads take owners in turn; an owner may run at most all threads
but one at once, so the next owner's work never waits for the end of one owner's (a
tenant's files built to take the whole probe deadline each), and a pool whose queue is
full refuses at once instead of growing without bound.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from app.errors import Busy

T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    owner: str
    work: Callable[[], Any]
    result: asyncio.Future[Any]


class FairPool:
    def __init__(self, name: str, threads: int, max_queued: int = 1024) -> None:
        self.name = name
        self.max_queued = max_queued
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"earmark-{name}")
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._queued = 0
        self._running: dict[str, int] = {}
        self._free = threads
        # One owner keeps at most this many threads busy: one is left for the others.
        self._per_owner = max(1, threads - 1)

    async def run(self, owner: str, work: Callable[..., T], *args: Any) -> T:
        if self._queued >= self.max_queued:
            raise Busy(f"The gateway is busy ({self.name}); retry shortly.")
        loop = asyncio.get_running_loop()
        job = _Job(owner, lambda: work(*args), loop.create_future())
        self._queues.setdefault(owner, deque()).append(job)
        self._queued += 1
        self._dispatch()
        return await job.result  # cancelled while queued: skipped; while running: let be

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._free:
            job = self._next_job()
            if job is None:
                return
            self._free -= 1
            self._running[job.owner] = self._running.get(job.owner, 0) + 1
            future = self._executor.submit(job.work)
            future.add_done_callback(
                lambda done, job=job: loop.call_soon_threadsafe(self._finished, job, done)
            )

    def _next_job(self) -> _Job | None:
        """The next job of the owner who has waited longest, skipping owners at their cap.
        Even a lone owner leaves a thread free: whoever comes next would otherwise wait
        for one of its jobs to end, and a tenant can make each take the whole deadline."""
        for owner, queue in self._queues.items():
            if self._running.get(owner, 0) >= self._per_owner:
                continue
            job = queue.popleft()
            self._queued -= 1
            if queue:
                self._queues.move_to_end(owner)
            else:
                del self._queues[owner]
            if job.result.cancelled():
                return self._next_job()
            return job
        return None

    def _finished(self, job: _Job, done: Future[Any]) -> None:
        self._free += 1
        self._running[job.owner] -= 1
        if not self._running[job.owner]:
            del self._running[job.owner]
        if not job.result.done():
            error = done.exception()
            if error is None:
                job.result.set_result(done.result())
            else:
                job.result.set_exception(error)
        self._dispatch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class Executors:
    probe: FairPool  # audio parsing (FFmpeg): bounded per upload, CPU-heavy for big files
    passwords: FairPool  # argon2: 64 MiB and tens of ms each, by design
    files: FairPool  # reads of uploads spooled to disk

    @classmethod
    def create(cls, probe: int, passwords: int, files: int) -> Executors:
        return cls(
            probe=FairPool("probe", probe),
            passwords=FairPool("passwords", passwords, max_queued=32),
            files=FairPool("files", files),
        )

    def close(self) -> None:
        for pool in (self.probe, self.passwords, self.files):
            pool.close()
