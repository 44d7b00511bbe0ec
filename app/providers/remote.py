"""Remote providers: an OpenAI-compatible or Azure OpenAI audio endpoint over HTTP.

The form is encoded once per attempt as a stream (the fields, then the spooled file read
in chunks), so the upload is never held whole in memory and the provider's answer can be
told apart by whether it came after the last byte was sent: a failure before that means
the provider cannot have done the work; after it, it may have. The tenant's key and
headers never go upstream; the provider's key never comes back.
"""

from __future__ import annotations

import asyncio
import secrets
import select
from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from app.catalog import ModelRoute
from app.config import ProviderConfig
from app.errors import EarmarkError
from app.gateway.form import Upload
from app.providers import (
    MAX_ANSWER_BYTES,
    AttemptFailed,
    Progress,
    UpstreamRequest,
    UpstreamResponse,
)

_CHUNK = 1 << 16
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
_CONNECTING = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)  # never reached
# The connection broke: the provider closed or reset it (before the last bytes: dropped).
_BROKEN = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError)
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR  # RDHUP: Linux


def _closed_by_provider(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the provider has closed this connection: a pooled keep-alive one it
    closed, idle, just as this call took it, or one it answered early (a refusal on the
    headers) and closed. The event loop may not have read that yet (it is busy writing
    the upload; a mark that did not wait), so the socket itself is asked. Then another
    write would reset the connection and throw an answer waiting in it away, unread.
    (Whether it has *answered* cannot be told from the socket: over TLS any record, a
    session ticket, is readable bytes; aiohttp stops the upload itself once an early
    answer it has read is done with.)"""
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _HUNG_UP)
    return bool(poller.poll(0))


def _closer(response: aiohttp.ClientResponse):
    async def close() -> None:
        response.close()  # a stream left before its end: the connection is not reused

    return close


def create_client() -> aiohttp.ClientSession:
    """The process's one upstream session, created in the lifespan (it needs the loop).
    Transcripts are small: identity encoding avoids decompressing on the hot path, and
    lets a stream be relayed byte for byte. aiohttp rather than httpx: a fifth of the CPU
    per upload (measured in ``bench/``), which on one event loop is throughput."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=30),
        headers={"accept-encoding": "identity", "user-agent": "earmark"},
        skip_auto_headers=("accept",),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),  # every request sets its provider's own
        cookie_jar=aiohttp.DummyCookieJar(),  # a provider's cookies are not the next call's
    )


def _quoted(value: str) -> str:
    """A form-data parameter value as browsers escape it (RFC 7578, 4.2)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _Body(aiohttp.payload.Payload):
    """The multipart form, written as a stream and counting what has gone out;
    ``upload_deadline`` is lifted once the last bytes are handed over (the answer has its
    own timeout)."""

    def __init__(
        self,
        fields: dict[str, list[str]],
        upload: Upload,
        progress: Progress,
        upload_deadline: asyncio.Timeout,
    ) -> None:
        self.boundary = secrets.token_hex(16)
        super().__init__(upload, content_type=f"multipart/form-data; boundary={self.boundary}")
        self.progress = progress
        self.upload_deadline = upload_deadline
        head = b"".join(
            f'--{self.boundary}\r\ncontent-disposition: form-data; name="{_quoted(name)}"'
            f"\r\n\r\n".encode()
            + value.encode()
            + b"\r\n"
            for name, values in fields.items()
            for value in values
        )
        self.head = (
            head
            + (
                f'--{self.boundary}\r\ncontent-disposition: form-data; name="file"; '
                f'filename="{_quoted(upload.filename)}"\r\ncontent-type: '
                f"{_quoted(upload.content_type)}\r\n\r\n"
            ).encode()
        )
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.upload = upload
        self.unfinished: asyncio.Transport | None = None  # a connection left mid-request
        self._size = len(self.head) + upload.size + len(self.tail)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("an upload is streamed, never decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        # Reads of the spool come from memory or from the page cache it was just written to.
        progress = self.progress
        self.upload.file.seek(0)
        await writer.write(self.head)
        progress.bytes_sent = len(self.head)
        try:
            while chunk := self.upload.file.read(_CHUNK):
                if _closed_by_provider(writer.transport):
                    return self._stop(writer)
                await writer.write(chunk)
                progress.bytes_sent += len(chunk)
            if progress.before_last is not None:
                await progress.before_last()
        except asyncio.CancelledError:  # the answer came first (read by the loop), a deadline
            self._stop(writer)
            raise
        if _closed_by_provider(writer.transport):
            return self._stop(writer)  # not even the last bytes
        # Lifted first: a deadline expiring now ends the attempt before its last bytes.
        self.upload_deadline.reschedule(None)
        # From here the provider gets the whole request even if the call is abandoned: a
        # closing connection still flushes what it was handed.
        progress.reached = True
        await writer.write(self.tail)
        progress.bytes_sent += len(self.tail)

    def _stop(self, writer: AbstractStreamWriter) -> None:
        """The request stops short of its end. The provider has spoken: more bytes could
        only reset the connection, and with it an answer waiting to be read (a refusal),
        which is read instead; with no answer the attempt is ``dropped`` (the provider
        never had the request whole). Or the upload was cancelled. Either way the
        connection, its request unfinished, is not used again, and is aborted once done
        with (``abort``): closed gently, it would flush an upload nobody wants."""
        cast(StreamWriter, writer).protocol.force_close()
        self.unfinished = writer.transport

    def abort(self) -> None:
        if self.unfinished is not None:
            self.unfinished.abort()

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        await self.write(writer)


class RemoteProvider:
    def __init__(
        self, name: str, config: ProviderConfig, api_key: str | None, http: aiohttp.ClientSession
    ) -> None:
        self.name = name
        self.config = config
        self.http = http
        self.headers: dict[str, str] = {}
        if api_key is not None:
            is_azure = config.kind == "azure"
            self.headers = (
                {"api-key": api_key} if is_azure else {"authorization": f"Bearer {api_key}"}
            )
        # As long as the provider may take between two reads (the wait for its answer is
        # one), and as long to connect or to get a pooled connection.
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_read=config.timeout_seconds,
            connect=config.connect_timeout_seconds,
        )

    def _url(self, route: ModelRoute, operation: str) -> str:
        base = (self.config.base_url or "").rstrip("/")
        if self.config.kind == "azure":
            return (
                f"{base}/openai/deployments/{route.upstream_model}/audio/{operation}"
                f"?api-version={self.config.api_version}"
            )
        return f"{base}/audio/{operation}"

    def _failed(self, error: Exception, progress: Progress) -> AttemptFailed:
        connecting = isinstance(error, _CONNECTING)
        reached = progress.reached and not connecting
        if isinstance(error, asyncio.TimeoutError) and not connecting:
            kind = "timeout"
            message = f"{self.name} did not answer within {self.config.timeout_seconds:g} s"
        elif reached:
            kind, message = "reset", f"{self.name} closed the connection without an answer"
        elif isinstance(error, _BROKEN) and not connecting:
            kind = "dropped"
            message = f"{self.name} closed the connection before it had the whole request"
        else:
            kind, message = "unreachable", f"could not reach {self.name} ({type(error).__name__})"
        return AttemptFailed(message, kind=kind, reached=reached, bytes_sent=progress.bytes_sent)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        # The upload must end within the provider's time too (aiohttp times reads only);
        # then the wait for the answer is timed by sock_read.
        upload_deadline = asyncio.timeout(self.config.timeout_seconds)
        body = _Body(request.fields, request.upload, request.progress, upload_deadline)
        try:
            async with upload_deadline:
                response = await self.http.post(
                    self._url(request.route, request.operation),
                    headers={**self.headers, "x-client-request-id": request.request_id},
                    data=body,
                    timeout=self.timeout,
                    allow_redirects=False,  # a redirect would re-send the tenant's audio elsewhere
                )
        except _TRANSPORT_ERRORS as error:
            body.abort()
            if isinstance(error.__cause__, EarmarkError):  # from ``before_last``
                raise error.__cause__ from None
            raise self._failed(error, request.progress) from None
        content_type = response.headers.get("content-type", "")
        if response.status < 400 and content_type.startswith("text/event-stream"):
            return UpstreamResponse(
                response.status,
                content_type,
                read_chunk=self._chunks(response, request.progress),
                close=_closer(response),
            )
        try:
            data = await self._whole(response, request.progress)
        except _TRANSPORT_ERRORS as error:
            raise self._failed(error, request.progress) from None
        finally:
            response.release()  # closes the connection if the answer was not read to its end
            body.abort()
        return UpstreamResponse(response.status, content_type, body=data)

    async def _whole(self, response: aiohttp.ClientResponse, progress: Progress) -> bytes:
        """The answer, within ``MAX_ANSWER_BYTES``. More is not a transcript: from a 2xx
        the attempt fails (the provider had the request and answered, so it billed); a
        refusal's body is cut there (it only words the refusal)."""
        refusal = response.status >= 400
        length = response.content_length
        if length is not None and length <= MAX_ANSWER_BYTES:
            return await response.read()
        if length is None or refusal:  # read as it comes, within the bound
            chunks, size = [], 0
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    break
            else:
                return b"".join(chunks)
            if refusal:
                return b"".join(chunks)[:MAX_ANSWER_BYTES]
        raise AttemptFailed(
            f"{self.name} sent an answer larger than {MAX_ANSWER_BYTES >> 20} MiB",
            kind="malformed",
            reached=True,
            bytes_sent=progress.bytes_sent,
        )

    def _chunks(
        self, response: aiohttp.ClientResponse, progress: Progress
    ) -> Callable[[], Awaitable[bytes]]:
        async def read() -> bytes:
            try:  # readany keeps what it has not returned when cancelled
                return await response.content.readany()
            except _TRANSPORT_ERRORS:
                raise AttemptFailed(
                    f"{self.name} broke off the stream",
                    kind="broken_stream",
                    reached=True,
                    bytes_sent=progress.bytes_sent,
                ) from None

        return read

    async def close(self) -> None:
        return None  # the shared client is closed with the process
