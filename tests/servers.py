"""ASGI apps served for real on loopback, in a thread of the test process."""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from app.runtime.server import PROTOCOL, GuardedProtocol
from tests.processes import free_port


class ResettableProtocol(GuardedProtocol):
    """For the fake provider: a handler can reach its connection, to reset it as a
    provider that fails mid-call does."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.scope is not None:
            self.scope.setdefault("extensions", {})["earmark.transport"] = self.transport  # type: ignore[typeddict-unknown-key]


class ServerThread:
    def __init__(self, app: Any, protocol: str = PROTOCOL) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            http=protocol,  # by default, the limits `earmark serve` applies
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut, as a database restart would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def _cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result()

    def restore(self) -> None:
        """Listen again on the same port, as a restarted database would."""
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    def close(self) -> None:
        if self.server is not None and self.server.is_serving():
            self.cut()
        asyncio.run_coroutine_threadsafe(self._drain(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _drain(self) -> None:
        assert self.server is not None
        await self.server.wait_closed()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
