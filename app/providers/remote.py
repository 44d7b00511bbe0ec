"""Remote providers: an OpenAI-compatible or Azure OpenAI audio endpoint over HTTP.

The form is encoded once per attempt as a stream (the fields, then the spooled file read
in chunks), so the upload is never held whole in memory and the provider's answer can be
told apart by whether it came after the last byte was sent: a failure before that means
the provider cannot have done the work; after it, it may have. The tenant's key and
headers never go upstream; the provider's key never comes back.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx

from app.catalog import Route
from app.config import ProviderConfig
from app.form import Upload
from app.providers import AttemptFailed, Progress, UpstreamRequest, UpstreamResponse

_CHUNK = 1 << 16


def create_client() -> httpx.AsyncClient:
    """The process's one upstream client. Transcripts are small: identity encoding avoids
    decompressing on the hot path, and lets a stream be relayed byte for byte."""
    return httpx.AsyncClient(
        headers={"accept-encoding": "identity", "user-agent": "earmark"},
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        timeout=None,  # noqa: S113 - every request sets its provider's own timeout
    )


def _quoted(value: str) -> str:
    """A form-data parameter value as browsers escape it (RFC 7578, 4.2)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class _Body:
    """The multipart form as a stream, counting what has gone out."""

    def __init__(self, fields: dict[str, list[str]], upload: Upload, progress: Progress) -> None:
        self.progress = progress
        self.boundary = secrets.token_hex(16)
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
        self.length = len(self.head) + upload.size + len(self.tail)

    async def chunks(self) -> AsyncIterator[bytes]:
        # Reads of the spool come from memory or from the page cache it was just written to.
        progress = self.progress
        self.upload.file.seek(0)
        yield self.head
        progress.bytes_sent = len(self.head)
        while chunk := self.upload.file.read(_CHUNK):
            yield chunk
            progress.bytes_sent += len(chunk)
        yield self.tail
        progress.bytes_sent += len(self.tail)
        progress.reached = True


class RemoteProvider:
    def __init__(
        self, name: str, config: ProviderConfig, api_key: str | None, http: httpx.AsyncClient
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
        self.timeout = httpx.Timeout(config.timeout_seconds, connect=config.connect_timeout_seconds)

    def _url(self, route: Route, endpoint: str) -> str:
        base = (self.config.base_url or "").rstrip("/")
        if self.config.kind == "azure":
            return (
                f"{base}/openai/deployments/{route.upstream_model}/audio/{endpoint}"
                f"?api-version={self.config.api_version}"
            )
        return f"{base}/audio/{endpoint}"

    def _failed(self, error: httpx.HTTPError, progress: Progress) -> AttemptFailed:
        reached = progress.reached and not isinstance(
            error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
        )
        if isinstance(error, httpx.TimeoutException):
            kind = "timeout"
            message = f"{self.name} did not answer within {self.config.timeout_seconds:g} s"
        elif reached:
            kind, message = "reset", f"{self.name} closed the connection without an answer"
        else:
            kind, message = "unreachable", f"could not reach {self.name} ({type(error).__name__})"
        return AttemptFailed(message, kind=kind, reached=reached, bytes_sent=progress.bytes_sent)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        body = _Body(request.fields, request.upload, request.progress)
        http_request = self.http.build_request(
            "POST",
            self._url(request.route, request.endpoint),
            headers={
                **self.headers,
                "content-type": f"multipart/form-data; boundary={body.boundary}",
                "content-length": str(body.length),
                "x-client-request-id": request.request_id,
            },
            content=body.chunks(),
            timeout=self.timeout,
        )
        try:
            response = await self.http.send(http_request, stream=True)
        except httpx.HTTPError as error:
            raise self._failed(error, request.progress) from None
        content_type = response.headers.get("content-type", "")
        if response.status_code < 400 and content_type.startswith("text/event-stream"):
            return UpstreamResponse(
                response.status_code,
                content_type,
                events=self._events(response, request.progress),
                close=response.aclose,
            )
        try:
            data = await response.aread()
        except httpx.HTTPError as error:
            raise self._failed(error, request.progress) from None
        finally:
            await response.aclose()
        return UpstreamResponse(response.status_code, content_type, body=data)

    async def _events(self, response: httpx.Response, progress: Progress) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.HTTPError:
            raise AttemptFailed(
                f"{self.name} broke off the stream",
                kind="broken_stream",
                reached=True,
                bytes_sent=progress.bytes_sent,
            ) from None

    async def close(self) -> None:
        return None  # the shared client is closed with the process
