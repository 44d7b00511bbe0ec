"""The upstream connection a provider closed: a pooled keep-alive connection it closed,
idle, just as a call took it. The request never reached it whole, so the attempt is
``dropped`` (it cannot have done the work; sent again), never ``reset`` after the work
(charged for review)."""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable

import aiohttp
import pytest

from app.catalog import ModelRoute
from app.config import ModelConfig, ProviderConfig
from app.gateway.form import Upload
from app.providers import AttemptFailed, Progress, UpstreamRequest
from app.providers.remote import RemoteProvider, create_client
from tests.processes import wav_of_size

ANSWER = b'{"text":"ok","usage":{"type":"duration","seconds":1}}'
BUSY = b'{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}'


class _KeepAliveServer:
    """HTTP/1.1 on a blocking socket: each connection answers its requests and stays
    open, until ``close_idle`` closes the idle ones (the provider's keep-alive timeout).
    ``whole`` counts the requests it read to their last byte."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.refuse_early = False  # answer 429 on a request's headers, then close
        self.keep_after_refusal = False  # … or read the rest of the request and keep it
        self.interim = False  # send a 100 Continue on the headers, unasked (RFC 9110 allows)
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.whole = 0
        self.idle: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):  # closed under it by ``close_idle``
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            self._answer(connection)

    def _answer(self, connection: socket.socket) -> None:
        buffer = bytearray()
        with self.lock:
            self.idle.append(connection)
        while True:
            while b"\r\n\r\n" not in buffer:
                data = connection.recv(1 << 16)
                if not data:
                    return
                buffer += data
            head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
            buffer = bytearray(rest)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if self.interim:
                connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            refusing = self.refuse_early  # a test may turn it off while this one reads on
            if refusing:
                closing = b"" if self.keep_after_refusal else b"connection: close\r\n"
                connection.sendall(
                    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                    b"%scontent-length: %d\r\n\r\n%s" % (closing, len(BUSY), BUSY)
                )
                if not self.keep_after_refusal:
                    # The upload unread: the close resets the connection (RST, not FIN),
                    # a moment after the answer. (A reset that overtakes the answer
                    # fails the client's next write, and its event loop drops the
                    # connection unread: no client can help that.)
                    time.sleep(0.02)
                    connection.shutdown(socket.SHUT_RDWR)
                    connection.close()
                    return
            while len(buffer) < length:
                data = connection.recv(1 << 16)
                if not data:
                    return
                buffer += data
            del buffer[:length]
            if refusing:
                continue
            with self.lock:
                self.whole += 1
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)
            )

    def close_idle(self) -> None:
        with self.lock:
            for connection in self.idle:
                with contextlib.suppress(OSError):  # closed already (a refusal)
                    connection.shutdown(socket.SHUT_RDWR)  # its FIN, now
                connection.close()
            self.idle.clear()

    def close(self) -> None:
        self.listener.close()
        self.close_idle()


@pytest.fixture
def server():
    server = _KeepAliveServer()
    yield server
    server.close()


@pytest.fixture
def tls_server(tmp_path):
    """As ``server``, over TLS 1.3 (whose server sends session tickets after the
    handshake: bytes the client's socket holds that are no answer)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _KeepAliveServer(tls=context)
    yield server
    server.close()


def _request(
    provider_url: str, before_last: Callable[[], None] = lambda: None, size: int = 1_000
) -> tuple[ModelRoute, UpstreamRequest]:
    config = ProviderConfig(base_url=provider_url, timeout_seconds=5)
    route = ModelRoute(
        name="p/whisper-1", provider_name="p", provider=config, model="whisper-1",
        config=ModelConfig(),
    )  # fmt: skip
    audio = wav_of_size(size)  # 1,000: under a write buffer, nothing yields to the loop

    async def marking_sent() -> None:  # as the call path's mark, then ``before_last``
        before_last()

    upload = Upload(
        filename="a.wav", content_type="audio/wav", file=io.BytesIO(audio), size=len(audio)
    )
    request = UpstreamRequest(
        route=route,
        operation="transcriptions",
        fields={"model": ["whisper-1"]},
        upload=upload,
        request_id="req_1",
        owner="tenant",
        progress=Progress(before_last=marking_sent),
    )
    return route, request


def _closing(server: _KeepAliveServer) -> Callable[[], None]:
    def close() -> None:
        # The provider closes the connection as the last bytes are about to go, and this
        # event loop is busy: its end is in this machine's socket, unread.
        server.close_idle()
        time.sleep(0.05)

    return close


@pytest.mark.anyio
async def test_a_pooled_connection_the_provider_closed_is_dropped_not_reached(server):
    http = create_client()
    url = f"http://127.0.0.1:{server.port}/v1"
    try:
        route, first = _request(url)
        provider = RemoteProvider("p", route.provider, "sk-test", http)
        answer = await provider.send(first)
        assert (answer.status, answer.body) == (200, ANSWER)

        _, stale = _request(url, before_last=_closing(server))
        with pytest.raises(AttemptFailed) as failed:
            await provider.send(stale)
        assert (failed.value.kind, failed.value.reached) == ("dropped", False)
        assert not stale.progress.reached
        assert "closed the connection before it had the whole request" in failed.value.message
        assert server.whole == 1

        _, again = _request(url)
        answer = await provider.send(again)  # a new connection
        assert (answer.status, server.whole) == (200, 2)
        assert again.progress.reached
        assert stale.progress.bytes_sent < again.progress.bytes_sent  # all but the last bytes
    finally:
        await http.close()


@pytest.mark.anyio
async def test_a_refusal_before_the_upload_ends_is_read_not_dropped(server):
    """A provider (or its edge) may refuse on the headers and close: that answer is the
    attempt's, a refusal that billed nothing, not a dropped connection to try again."""
    server.refuse_early = True
    http = create_client()
    try:
        route, request = _request(
            f"http://127.0.0.1:{server.port}/v1", before_last=lambda: time.sleep(0.05)
        )
        answer = await RemoteProvider("p", route.provider, "sk-test", http).send(request)
        assert (answer.status, answer.body) == (429, BUSY)
    finally:
        await http.close()


@pytest.mark.anyio
@pytest.mark.parametrize("keep", [False, True], ids=["reset", "kept"])
async def test_a_refusal_while_a_large_upload_is_going_is_read(server, keep):
    """The refusal comes with megabytes still to send, and the provider resets the
    connection or keeps reading: either way the tenant is owed the refusal, not a
    dropped connection sent again, and the next request works (on another connection
    if this one's request was left unfinished)."""
    server.refuse_early, server.keep_after_refusal = True, keep
    http = create_client()
    url = f"http://127.0.0.1:{server.port}/v1"
    try:
        route, request = _request(url, size=8_000_000)
        provider = RemoteProvider("p", route.provider, "sk-test", http)
        answer = await provider.send(request)
        assert (answer.status, answer.body) == (429, BUSY)
        server.refuse_early = False
        _, after = _request(url)
        assert (await provider.send(after)).status == 200
        assert server.whole == 1
    finally:
        await http.close()


@pytest.mark.anyio
@pytest.mark.parametrize("tls", [False, True], ids=["interim-answer", "tls"])
async def test_bytes_to_read_that_are_no_answer_do_not_stop_the_upload(tls, request):
    """Only a hang-up stops an upload early, never bytes waiting to be read: a 100
    Continue nobody asked for (HTTP allows it), or over TLS 1.3 records that are no
    answer (session tickets; asking for any readable byte hung such uploads)."""
    server = request.getfixturevalue("tls_server" if tls else "server")
    server.interim = not tls
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False))
    try:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/v1"
        route, call = _request(url, size=8_000_000)
        answer = await RemoteProvider("p", route.provider, "sk-test", http).send(call)
        assert (answer.status, answer.body, server.whole) == (200, ANSWER, 1)
        assert call.progress.reached
    finally:
        await http.close()
