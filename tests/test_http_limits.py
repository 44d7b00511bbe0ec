"""What a slow or hostile client can do to a connection of `earmark serve`: nothing that
holds it open past a deadline, grows memory, or keeps other tenants waiting."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.runtime.server import LINGER_BYTES, LINGER_SECONDS, connection_cap
from tests.audio_files import tone, wav
from tests.conftest import ADMIN
from tests.gateway import process_env
from tests.processes import serving

LIMITS = {
    "EARMARK_HTTP_HEADER_TIMEOUT": "1",
    "EARMARK_HTTP_KEEPALIVE_TIMEOUT": "1",
    "EARMARK_HTTP_BODY_GRACE": "1",
    "EARMARK_HTTP_MIN_BODY_RATE": "10000",
    "EARMARK_HTTP_MAX_CONNECTIONS": "20",
    "EARMARK_HTTP_MAX_HEADER_BYTES": "8192",
    "EARMARK_HTTP_MAX_HEADERS": "50",
}


# HTTP limits do not depend on the database: SQLite only.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def server(database_url: str, fake_provider, tmp_path: Path) -> Iterator[str]:
    env = {**process_env(database_url, fake_provider.url, tmp_path), **LIMITS}
    with serving(env, tmp_path / "serve.log") as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started, data = time.monotonic(), b""
    with contextlib.suppress(ConnectionResetError):  # closed with our bytes still unread
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def _send_until_answered(
    sock: socket.socket, chunk: bytes, every: float, within: float
) -> tuple[bytes, float, int]:
    """Send ``chunk`` every ``every`` seconds, as a client still uploading does, until the
    server answers; return the answer (read to the server's FIN), when it came, and how
    many bytes had been sent by then."""
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < within:
        if select.select([sock], [], [], every)[0]:
            data, _ = _answer(sock)
            return data, time.monotonic() - started, sent
        with contextlib.suppress(BlockingIOError):
            sent += sock.send(chunk, socket.MSG_DONTWAIT)
    raise AssertionError(f"no answer within {within} s ({sent} bytes sent)")


def _healthy_meanwhile(url: str) -> None:
    started = time.monotonic()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    assert time.monotonic() - started < 1


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server) as sock:
        _healthy_meanwhile(server)
        data, took = _answer(sock)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert took < 5


def test_headers_one_byte_a_second_are_cut_off(server):
    with _connect(server) as sock:
        started = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\n":
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
            if time.monotonic() - started > 6:
                break
        data, _ = _answer(sock)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 8


@pytest.mark.parametrize(
    "headers",
    [b"x-big: " + b"a" * 20_000 + b"\r\n", b"".join(b"x-h%d: v\r\n" % i for i in range(10_000))],
    ids=["one-huge-header", "ten-thousand-headers"],
)
def test_oversized_headers_are_431(server, headers):
    with _connect(server) as sock:
        with contextlib.suppress(OSError):  # the server may close before it reads it all
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
        data, _ = _answer(sock)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert b'"code":"http_431"' in data


def _tenant_key(server: str) -> dict:
    tenant = httpx.post(f"{server}/admin/tenants", headers=ADMIN, json={"name": "slow"}).json()
    return httpx.post(
        f"{server}/admin/keys", headers=ADMIN, json={"tenant_id": tenant["id"], "name": "slow"}
    ).json()


def test_a_body_that_trickles_in_is_cut_off_and_recorded(server):
    key = _tenant_key(server)
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\n"
            b"authorization: Bearer " + key["secret"].encode() + b"\r\n"
            b"content-type: multipart/form-data; boundary=b\r\ncontent-length: 100000\r\n\r\n"
        )
        data, took, _ = _send_until_answered(sock, b"x", every=0.5, within=8)
        _healthy_meanwhile(server)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert took < 6
    deadline = time.monotonic() + 5
    while True:  # the handler records the refusal as the connection goes
        calls = httpx.get(f"{server}/admin/keys/{key['id']}/calls", headers=ADMIN).json()["data"]
        if calls or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(c["status"], c["error_code"]) for c in calls] == [("rejected", "client_disconnected")]


def _one_more_is_refused(url: str, held: list[socket.socket], says: bytes) -> None:
    """With ``held`` open, one more connection gets a 503 at once that ``says`` why; once
    they close, the server answers again."""
    try:
        with _connect(url) as extra:
            data, took = _answer(extra)
        assert data.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in data
        assert says in data
        assert took < 1
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    _healthy_meanwhile(url)


def test_connections_past_the_cap_are_refused_at_once(server):
    idle = [_connect(server) for _ in range(20)]
    _one_more_is_refused(server, idle, b"Too many open connections")


def test_one_client_address_cannot_take_every_connection(database_url, fake_provider, tmp_path):
    """Connections dribbling half a request line hold a slot each until their deadline: one
    address may hold its share (5 here), not the process's whole cap, so another client
    still gets in. (Loopback counts as a client here: it is not a trusted proxy.)"""
    env = {**process_env(database_url, fake_provider.url, tmp_path), **LIMITS}
    env["EARMARK_HTTP_HEADER_TIMEOUT"] = "30"
    env["EARMARK_HTTP_MAX_CONNECTIONS_PER_CLIENT"] = "5"
    env["FORWARDED_ALLOW_IPS"] = "192.0.2.1"
    with serving(env, tmp_path / "serve.log") as url:
        dribbling = [_connect(url) for _ in range(5)]
        for sock in dribbling:
            sock.sendall(b"POST /v1/audio/transcrip")
        _one_more_is_refused(url, dribbling, b"from your address")


def test_connections_never_exhaust_the_open_file_limit(database_url, fake_provider, tmp_path):
    """1,100 idle connections against a process allowed 300 open files: those past what it
    can serve are refused, and a tenant already connected still uploads (a spooled file,
    an upstream connection) and gets its answer, not a 500."""
    env = {**process_env(database_url, fake_provider.url, tmp_path), **LIMITS}
    env["EARMARK_HTTP_MAX_CONNECTIONS"] = "1000"
    env["EARMARK_HTTP_KEEPALIVE_TIMEOUT"] = env["EARMARK_HTTP_HEADER_TIMEOUT"] = "30"
    cap = connection_cap(1000, 300)
    assert cap < 100
    with serving(env, tmp_path / "serve.log", open_files=300) as url:
        key = _tenant_key(url)["secret"]
        with httpx.Client(base_url=url, timeout=30) as tenant:
            assert tenant.get("/healthz").status_code == 200  # connected before the flood
            flood = []
            for _ in range(1_100):
                with contextlib.suppress(OSError):
                    flood.append(_connect(url))
            try:
                time.sleep(0.5)
                answer = tenant.post(
                    "/v1/audio/transcriptions",
                    headers={"authorization": f"Bearer {key}"},
                    data={"model": "openai/whisper-1"},
                    files={"file": ("a.wav", wav(tone(40)), "audio/wav")},  # over 1 MiB: spooled
                )
                assert answer.status_code == 200, answer.text
            finally:
                for sock in flood:
                    sock.close()
        time.sleep(0.5)
        _healthy_meanwhile(url)
    assert "Too many open files" not in (tmp_path / "serve.log").read_text()


def test_an_idle_keep_alive_connection_is_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        data, took = _answer(sock)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert took < 4


def test_a_header_that_never_ends_is_cut_off_at_the_cap(server):
    """httptools buffers an unfinished header line itself: 100 MiB once fitted in one."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-endless: ")
        data, _, sent = _send_until_answered(sock, b"a" * 65536, every=0.001, within=30)
    assert sent < 4 << 20  # cut off near the cap (less what socket buffers took)
    assert data.startswith(b"HTTP/1.1 431 ")


def test_a_flood_of_pipelined_requests_is_dropped(server):
    """uvicorn queues every pipelined request it parses: unbounded, a gigabyte in seconds."""
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    with _connect(server) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request * 5_000)
        data, took = _answer(sock)
    assert data.count(b"HTTP/1.1 200 ") < 5_000  # the connection went before the flood did
    assert took < 5
    _healthy_meanwhile(server)


def test_pipelining_within_the_cap_still_works(server):
    request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(request * 4 + b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data, _ = _answer(sock)
    assert data.count(b"HTTP/1.1 200 ") == 5


def test_an_answer_before_the_body_stops_the_reading(server):
    """A stranger's upload refused 401 is not read to its end at 16 KB/s: the answer and a
    FIN come at once, while the client is still sending."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: multipart/form-data; boundary=b\r\ncontent-length: 10000000\r\n\r\n"
        )
        data, took, _ = _send_until_answered(sock, b"x" * 800, every=0.05, within=5)
    assert data.startswith(b"HTTP/1.1 401 ")
    assert took < 2


def test_a_client_that_keeps_sending_after_the_answer_is_closed(server):
    """The rest of a refused upload is drained, then the connection closes: a client that
    never stops cannot hold it."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: multipart/form-data; boundary=b\r\ncontent-length: 10000000000\r\n\r\n"
        )
        started, sent = time.monotonic(), 0
        with pytest.raises(OSError):  # reset once the server stops draining
            while time.monotonic() - started < 30:
                sent += sock.send(b"x" * 65536)
    assert time.monotonic() - started < LINGER_SECONDS + 5
    assert sent < LINGER_BYTES + (16 << 20)  # what it drained, and what the buffers held


@pytest.mark.parametrize("size", [200_000, 5_000_000])
def test_a_client_still_uploading_reads_its_refusal(server, size):
    """httpx writes the whole body before it reads: were the connection closed with that
    body unread, the kernel would reset it and the client see a ReadError, not its 401."""

    async def refused() -> list[tuple[int, str | None]]:
        async with httpx.AsyncClient(timeout=10) as client:
            answers = [
                await client.post(
                    f"{server}/v1/audio/transcriptions",
                    headers={"authorization": "Bearer sk-bf-wrong"},
                    data={"model": "whisper-1"},
                    files={"file": ("speech.wav", b"\0" * size, "audio/wav")},
                )
                for _ in range(20)
            ]
        # The answer says the connection closes, so the next call never reuses it.
        return [(answer.status_code, answer.headers.get("connection")) for answer in answers]

    assert asyncio.run(refused()) == [(401, "close")] * 20


def test_a_host_header_no_url_can_carry_is_a_400(server):
    """A request URL is built from the Host header: one with a port of ``abc`` made the
    framework's URL parser raise, a bare 500 (and a traceback in the log) for anyone. One
    a URL can carry reaches the application (here: a 401 for the missing key)."""
    for host in (b"h:abc", b"h:99999", b"a b", b"[::1", b"h:80:80"):
        for path in (b"/v1/audio/transcriptions", b"/v1/audio/transcriptions/", b"/v1/quota"):
            with _connect(server) as sock:
                sock.sendall(b"POST " + path + b" HTTP/1.1\r\nhost: " + host + b"\r\n\r\n")
                data, _ = _answer(sock)
            assert data.startswith(b"HTTP/1.1 400 "), (host, path, data)
            assert b'"type":"invalid_request_error"' in data
    for host in (b"example.com:443", b"[::1]:8080", b"10.0.0.1", b"h:"):
        with _connect(server) as sock:
            sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: " + host + b"\r\n\r\n")
            data, _ = _answer(sock)
        assert data.startswith(b"HTTP/1.1 401 "), (host, data)
    _healthy_meanwhile(server)
