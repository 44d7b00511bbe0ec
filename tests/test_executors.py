"""The bounded pools: fair between owners, and never all one owner's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.runtime.executors import FairPool


@pytest.mark.anyio
async def test_one_owner_never_holds_every_thread():
    """A tenant's uploads built to take the whole probe deadline each (found by an attack
    campaign: another tenant's call waited ~8 s for one of them to end) leave a thread
    free for whoever comes next."""
    pool = FairPool("probe", 3)
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1

    try:
        greedy = [asyncio.ensure_future(pool.run("greedy", slow)) for _ in range(8)]
        for _ in range(500):  # until the threads it may have are busy
            if running == 2:
                break
            await asyncio.sleep(0.01)
        other = await asyncio.wait_for(pool.run("other", lambda: "done"), 1)
        assert other == "done"
        assert not any(job.done() for job in greedy)
        release.set()
        await asyncio.gather(*greedy)
        assert most == 2
    finally:
        release.set()
        pool.close()
