"""Run Earmark as a real process on loopback, as an operator would."""

from __future__ import annotations

import io
import os
import resource
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx


def wav_of_size(size: int, sample: bytes = b"\x00\x00") -> bytes:
    """A valid 16 kHz mono PCM WAV file of exactly ``size`` bytes (``size`` even)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16_000)
        writer.writeframes(sample * ((size - 44) // 2))
    data = buffer.getvalue()
    assert len(data) == size
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def earmark_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EARMARK_")}
    return {**env, "EARMARK_DATABASE_URL": database_url, **extra}


def run_cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def serving_many(env: dict[str, str], directory: Path, count: int) -> Iterator[list[str]]:
    """``count`` `earmark serve` processes on one database; yields their base URLs."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(serving(env, directory / f"gateway-{n}.log")) for n in range(count)
        ]


@contextmanager
def serving(
    env: dict[str, str], log: Path, *args: str, open_files: int | None = None
) -> Iterator[str]:
    """Start `earmark serve` on a free loopback port (with at most ``open_files`` open
    files, if given); yield its base URL once healthy."""
    port = free_port()

    def limit_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit_files,  # sets a limit in the child; starts no thread
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"earmark serve exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"earmark serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def children_named(pid: int, word: bytes) -> list[int]:
    """The ids of ``pid``'s child processes whose command line holds ``word``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                if int(parent) == pid and word in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
