"""Where a call goes upstream: providers behind one interface.

A provider takes one ``UpstreamRequest`` and returns the ``UpstreamResponse`` it got, or
raises ``AttemptFailed`` saying whether the request reached it whole (so that it may have
done, and billed, the work). Remote OpenAI-compatible and Azure endpoints (``remote``) and
this machine's engines (``local``) answer alike; the call path never asks which it holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # worker processes import this package: keep it light
    import aiohttp

    from app.catalog import ModelRoute
    from app.config import Config
    from app.gateway.form import Upload
    from app.runtime.executors import FairPool


# The most of an answer a call holds: a transcript, and a three-hour file's verbose JSON
# with word timestamps is a few MiB. A provider sending more (a whole answer, or one
# event of a stream) cannot take this process's memory with it: its attempt fails.
MAX_ANSWER_BYTES = 16 << 20


@dataclass(slots=True)
class Progress:
    """How much of a request has gone out, kept by the provider as it sends: whether the
    provider had it whole decides what an abandoned attempt may have cost."""

    bytes_sent: int = 0
    reached: bool = False
    # Awaited before the request's last bytes go (from then on the provider may have it
    # whole and bill it): the call path records that first. What it raises ends the
    # attempt unsent, and is what ``send`` raises.
    before_last: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    route: ModelRoute
    operation: str  # transcriptions | translations
    fields: dict[str, list[str]]  # as forwarded: the provider's model, the format to ask for
    upload: Upload
    request_id: str  # the provider sees it as x-client-request-id
    owner: str  # the tenant, for pools that are fair between tenants
    progress: Progress


async def _nothing_to_close() -> None:
    return None


@dataclass(slots=True)
class UpstreamResponse:
    """An answer: whole (``body``), or a server-sent event stream still arriving, read a
    chunk at a time (``read_chunk``: ``b""`` at its end; a read cancelled loses nothing,
    so a stream its client left can still be read to its end)."""

    status: int
    content_type: str
    body: bytes = b""
    read_chunk: Callable[[], Awaitable[bytes]] | None = None
    close: Callable[[], Awaitable[None]] = _nothing_to_close


class AttemptFailed(Exception):
    """No complete answer came. ``reached`` says the request got to the provider whole, so
    it may have done and billed the work (a timeout or a reset after sending); otherwise it
    cannot have (a refused connection, a reset during the upload, a local worker killed)."""

    def __init__(self, message: str, *, kind: str, reached: bool, bytes_sent: int = 0) -> None:
        super().__init__(message)
        self.message = message
        # timeout | unreachable | dropped | reset | broken_stream | malformed | worker_died
        self.kind = kind
        self.reached = reached
        self.bytes_sent = bytes_sent


class Provider(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def close(self) -> None: ...


def build_providers(
    config: Config, api_keys: dict[str, str], http: aiohttp.ClientSession, files: FairPool
) -> dict[str, Provider]:
    """One provider object per configured provider, by name."""
    from app.providers.local import LocalProvider
    from app.providers.remote import RemoteProvider

    return {
        name: (
            LocalProvider(name, provider, files)
            if provider.kind == "local"
            else RemoteProvider(name, provider, api_keys.get(name), http)
        )
        for name, provider in config.providers.items()
    }
